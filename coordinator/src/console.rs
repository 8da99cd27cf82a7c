//! The operations console's live figures. Every heartbeat carries each
//! actor's cumulative counters; this keeps the previous report of every node
//! and turns two successive ones into rates (records/s per edge and actor,
//! the share of time a sender was blocked, CPU per node), and sums late,
//! dead-lettered and duplicate events per wall-clock minute. It sits beside
//! the cluster state, under its own lock, so heartbeats never wait for a
//! deployment.

use adclick_core::backpressure::{blocked_ratio, delta, per_second, Level};
use adclick_proto::cluster::{
    ActorCounters, ActorState, ActorView, ConsoleResponse, EdgeView, MinuteView, NodeView,
    PartitionView, ProcessCounters,
};
use std::collections::{HashMap, VecDeque};

/// Minutes of late / dead-lettered / duplicate counts kept.
pub const MINUTES_KEPT: usize = 30;

const MINUTE_MS: i64 = 60_000;

/// One node's last report and the rates derived from it.
#[derive(Clone, Debug, Default)]
struct NodeSample {
    at_ms: i64,
    cpu_seconds: f64,
    rss_bytes: u64,
    cpu_percent: f64,
    /// Actor id → (generation, counters).
    actors: HashMap<String, (u64, ActorCounters)>,
    edges: Vec<(u64, EdgeView)>,
    views: Vec<(u64, ActorView)>,
}

/// Rates and per-minute sums for the console.
#[derive(Debug, Default)]
pub struct Console {
    nodes: HashMap<String, NodeSample>,
    minutes: VecDeque<MinuteView>,
}

impl Console {
    /// Takes one heartbeat of `node` at wall time `now_ms`.
    pub fn heartbeat(
        &mut self,
        node: &str,
        actors: &[ActorState],
        process: Option<&ProcessCounters>,
        now_ms: i64,
    ) {
        let prev = self.nodes.remove(node).unwrap_or_default();
        let elapsed = now_ms - prev.at_ms;
        let first = prev.at_ms == 0;
        let mut next = NodeSample {
            at_ms: now_ms,
            ..Default::default()
        };
        if let Some(p) = process {
            next.cpu_seconds = p.cpu_seconds;
            next.rss_bytes = p.rss_bytes;
            if !first && elapsed > 0 && p.cpu_seconds >= prev.cpu_seconds {
                next.cpu_percent = (p.cpu_seconds - prev.cpu_seconds) * 100_000.0 / elapsed as f64;
            }
        }
        let (mut late, mut dlq, mut dups) = (0, 0, 0);
        for a in actors {
            let Some(c) = a.counters.clone() else {
                continue;
            };
            let before = prev
                .actors
                .get(&a.actor_id)
                .filter(|(g, _)| *g == a.generation)
                .map(|(_, c)| c);
            let d = |f: fn(&ActorCounters) -> u64| delta(before.map_or(0, f), f(&c));
            late += d(|c| c.late);
            dlq += d(|c| c.dead_lettered);
            dups += d(|c| c.duplicates);
            if !first {
                next.views.push((
                    a.generation,
                    ActorView {
                        actor_id: a.actor_id.clone(),
                        node_id: node.to_owned(),
                        records_in_per_s: per_second(d(|c| c.records_in), elapsed),
                        mailbox_fill: if c.mailbox_capacity == 0 {
                            0.0
                        } else {
                            f64::from(c.mailbox_len) / f64::from(c.mailbox_capacity)
                        },
                    },
                ));
                for e in &c.edges {
                    let old = before.and_then(|b| b.edges.iter().find(|o| o.to == e.to));
                    let records = delta(old.map_or(0, |o| o.records), e.records);
                    let blocked = delta(old.map_or(0, |o| o.blocked_ns), e.blocked_ns);
                    let ratio = blocked_ratio(blocked, elapsed);
                    next.edges.push((
                        a.generation,
                        EdgeView {
                            from: a.actor_id.clone(),
                            to: e.to.clone(),
                            records_per_s: per_second(records, elapsed),
                            blocked_ratio: ratio,
                            level: Level::of(ratio).as_str().to_owned(),
                        },
                    ));
                }
            }
            next.actors.insert(a.actor_id.clone(), (a.generation, c));
        }
        self.add_minute(now_ms, late, dlq, dups);
        self.nodes.insert(node.to_owned(), next);
    }

    fn add_minute(&mut self, now_ms: i64, late: u64, dlq: u64, dups: u64) {
        let minute = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        if self.minutes.back().is_none_or(|m| m.minute_ms < minute) {
            self.minutes.push_back(MinuteView {
                minute_ms: minute,
                ..Default::default()
            });
            while self.minutes.len() > MINUTES_KEPT {
                self.minutes.pop_front();
            }
        }
        if let Some(m) = self.minutes.back_mut() {
            m.late += late;
            m.dead_lettered += dlq;
            m.duplicates += dups;
        }
    }

    /// Forgets a node that left (its figures would be stale).
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// The console's figures for the actors of `generation`.
    pub fn view(&self, generation: u64, now_ms: i64) -> ConsoleResponse {
        let mut r = ConsoleResponse {
            now_ms,
            minutes: self.minutes.iter().cloned().collect(),
            ..Default::default()
        };
        let mut ids: Vec<&String> = self.nodes.keys().collect();
        ids.sort();
        for id in ids {
            let n = &self.nodes[id];
            r.nodes.push(NodeView {
                node_id: id.clone(),
                cpu_percent: n.cpu_percent,
                rss_bytes: n.rss_bytes,
                reported_ms: n.at_ms,
            });
            let current = |g: &u64| *g == generation;
            r.edges.extend(
                n.edges
                    .iter()
                    .filter(|(g, _)| current(g))
                    .map(|(_, e)| e.clone()),
            );
            r.actors.extend(
                n.views
                    .iter()
                    .filter(|(g, _)| current(g))
                    .map(|(_, a)| a.clone()),
            );
            for (actor, (g, c)) in &n.actors {
                if !current(g) {
                    continue;
                }
                r.partitions
                    .extend(c.partitions.iter().map(|p| PartitionView {
                        partition: p.partition,
                        actor_id: actor.clone(),
                        watermark: p.watermark,
                        idle: p.idle,
                        lag_ms: p.watermark.map(|w| n.at_ms - w),
                    }));
            }
        }
        r.edges
            .sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        r.actors.sort_by(|a, b| a.actor_id.cmp(&b.actor_id));
        r.partitions.sort_by_key(|p| p.partition);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_proto::cluster::{EdgeCounters, PartitionCounters};

    fn actor(id: &str, generation: u64, counters: ActorCounters) -> ActorState {
        ActorState {
            actor_id: id.into(),
            generation,
            state: "running".into(),
            watermark: None,
            counters: Some(counters),
        }
    }

    fn agg(records_in: u64, sent: u64, blocked_ns: u64, late: u64) -> ActorCounters {
        ActorCounters {
            records_in,
            late,
            mailbox_len: 25,
            mailbox_capacity: 100,
            edges: vec![EdgeCounters {
                to: "reduce-0".into(),
                records: sent,
                blocked_ns,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rates_and_backpressure_come_from_two_reports() {
        let mut c = Console::default();
        let t0 = 1_000 * MINUTE_MS;
        c.heartbeat(
            "node-0",
            &[actor("aggregate-0", 3, agg(0, 0, 0, 0))],
            None,
            t0,
        );
        let cpu = ProcessCounters {
            cpu_seconds: 1.5,
            rss_bytes: 10,
        };
        c.heartbeat(
            "node-0",
            &[actor("aggregate-0", 3, agg(1000, 40, 0, 0))],
            Some(&cpu),
            t0 + 500,
        );
        c.heartbeat(
            "node-0",
            &[actor("aggregate-0", 3, agg(3000, 240, 600_000_000, 2))],
            Some(&ProcessCounters {
                cpu_seconds: 2.0,
                rss_bytes: 20,
            }),
            t0 + 1500,
        );
        let v = c.view(3, t0 + 1600);
        assert_eq!(v.actors[0].records_in_per_s, 2000.0);
        assert_eq!(v.actors[0].mailbox_fill, 0.25);
        assert_eq!(v.edges[0].records_per_s, 200.0);
        assert!((v.edges[0].blocked_ratio - 0.6).abs() < 1e-9);
        assert_eq!(v.edges[0].level, "HIGH");
        assert!((v.nodes[0].cpu_percent - 50.0).abs() < 1e-9);
        assert_eq!(v.nodes[0].rss_bytes, 20);
        assert_eq!(v.minutes.last().map(|m| m.late), Some(2));
        // Another generation's actors are not shown.
        assert!(c.view(4, t0).actors.is_empty());
    }

    #[test]
    fn a_redeployed_actor_counts_from_zero_and_minutes_roll() {
        let mut c = Console::default();
        let t0 = 2_000 * MINUTE_MS;
        c.heartbeat(
            "node-1",
            &[actor("aggregate-1", 1, agg(500, 0, 0, 7))],
            None,
            t0,
        );
        // Generation 2: the counters restarted at zero.
        c.heartbeat(
            "node-1",
            &[actor("aggregate-1", 2, agg(50, 0, 0, 3))],
            None,
            t0 + MINUTE_MS,
        );
        let v = c.view(2, t0 + MINUTE_MS);
        assert_eq!(v.minutes.len(), 2);
        assert_eq!(v.minutes[0].late, 7);
        assert_eq!(v.minutes[1].late, 3);
        assert_eq!(v.actors[0].records_in_per_s, 50.0 * 1000.0 / 60_000.0);
        for i in 0..40 {
            c.heartbeat("node-1", &[], None, t0 + (2 + i) * MINUTE_MS);
        }
        assert_eq!(c.view(2, 0).minutes.len(), MINUTES_KEPT);
    }

    #[test]
    fn partitions_show_their_watermark_lag_and_idleness() {
        let mut c = Console::default();
        let map = ActorCounters {
            partitions: vec![
                PartitionCounters {
                    partition: 1,
                    watermark: Some(9_000),
                    idle: false,
                },
                PartitionCounters {
                    partition: 0,
                    watermark: None,
                    idle: true,
                },
            ],
            ..Default::default()
        };
        c.heartbeat("node-2", &[actor("map-0", 5, map)], None, 10_000);
        let v = c.view(5, 10_500);
        assert_eq!(v.partitions.len(), 2);
        assert!(v.partitions[0].idle && v.partitions[0].lag_ms.is_none());
        assert_eq!(v.partitions[1].lag_ms, Some(1_000));
        c.forget("node-2");
        assert!(c.view(5, 0).partitions.is_empty());
    }
}
