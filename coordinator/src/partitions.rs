//! Watching the input topic's partition count, off the job loop.
//!
//! The lookup asks the broker and can wait for seconds when it is slow or
//! down; the job loop only reads the last count seen, so it never waits for
//! the broker. A topic that gained partitions is redeployed from a
//! checkpoint: the new partitions get Map actors and are read from their
//! start, the old ones resume from their saved offsets.

use crate::registry::ClusterState;
use adclick_runtime::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How often the partition count is looked up.
const EVERY: Duration = Duration::from_secs(5);

/// Why the job must be redeployed for its input, if it must: the topic has
/// more partitions than the running generation reads.
pub fn grew(deployed: i32, seen: Option<i32>) -> Option<String> {
    match seen {
        Some(n) if deployed > 0 && n > deployed => Some(format!(
            "input topic grew from {deployed} to {n} partitions"
        )),
        _ => None,
    }
}

/// The start of the job's state reason while the first deployment waits
/// for the partition count.
const WAITING_FOR_BROKER: &str = "waiting for the broker to report the input topic's partitions";

/// Looks the partition count up every few seconds into
/// `ClusterState::input_partitions` until `shutdown`.
pub fn spawn_watch(
    bootstrap: String,
    topic: String,
    state: Arc<Mutex<ClusterState>>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let (b, t) = (bootstrap.clone(), topic.clone());
            let looked = tokio::task::spawn_blocking(move || {
                adclick_runtime::kafka::partition_count_within(&b, &t, EVERY)
            })
            .await;
            match looked {
                Ok(Ok(n)) => {
                    let mut s = state.lock().await;
                    if s.input_partitions != Some(n) {
                        tracing::info!(topic = %topic, partitions = n, "input partitions");
                        s.input_partitions = Some(n);
                        if s.state_reason.starts_with(WAITING_FOR_BROKER) {
                            s.state_reason = "waiting for the nodes to register".into();
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("looking up the input partitions: {e:#}");
                    // The first deployment waits for the count: say so, or
                    // `status` keeps saying it waits for nodes that are there.
                    let mut s = state.lock().await;
                    if s.input_partitions.is_none()
                        && s.job_state == crate::registry::JobState::WaitingForNodes
                    {
                        s.state_reason = format!("{WAITING_FOR_BROKER}: {e:#}");
                    }
                }
                Err(e) => tracing::warn!("partition lookup task: {e}"),
            }
            // Soon again while unknown: the first deployment waits for it.
            let known = state.lock().await.input_partitions.is_some();
            let wait = if known {
                EVERY
            } else {
                Duration::from_millis(500)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_more_partitions_than_deployed_redeploy() {
        assert_eq!(grew(4, Some(4)), None);
        assert_eq!(grew(4, None), None, "not known yet");
        assert_eq!(grew(0, Some(4)), None, "nothing deployed yet");
        assert_eq!(grew(4, Some(3)), None, "a shrunk topic is not followed");
        assert_eq!(
            grew(4, Some(6)).as_deref(),
            Some("input topic grew from 4 to 6 partitions")
        );
    }
}
