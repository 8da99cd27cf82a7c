//! Slices: the pre-aggregated breakdowns of every count (star schema).
//!
//! Every event counts in `*`, in one slice per group-by dimension
//! (`country=US`), and in every named filter it matches (`filter_id`).

use crate::event::ClickEvent;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The slice that holds every event.
pub const ALL: &str = "*";

/// A group-by dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// `country=<code>`.
    Country,
}

/// Whether a filter keeps the events that match its predicates or the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FilterMode {
    /// The slice holds events that match every given predicate.
    #[default]
    Include,
    /// The slice holds events that do not match them.
    Exclude,
}

/// A named filter, as in the chapter's `filter_id` table. Empty predicate
/// lists match everything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FilterDef {
    /// Slice name used in outputs and in the query API's `filter`.
    pub id: String,
    /// Include or exclude.
    #[serde(default)]
    pub mode: FilterMode,
    /// Country codes.
    #[serde(default)]
    pub country: Vec<String>,
    /// CIDR blocks, e.g. `10.0.0.0/8`.
    #[serde(default)]
    pub ip: Vec<String>,
    /// User ids.
    #[serde(default)]
    pub user_id: Vec<String>,
}

/// Which slices to aggregate in advance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceConfig {
    /// Group-by dimensions (default: country).
    #[serde(default = "default_dimensions")]
    pub dimensions: Vec<Dimension>,
    /// Named filters.
    #[serde(default)]
    pub filters: Vec<FilterDef>,
}

fn default_dimensions() -> Vec<Dimension> {
    vec![Dimension::Country]
}

impl Default for SliceConfig {
    fn default() -> Self {
        Self {
            dimensions: default_dimensions(),
            filters: Vec::new(),
        }
    }
}

/// Maximum number of named filters (they are tracked in a 64-bit mask).
pub const MAX_FILTERS: usize = 64;

#[derive(Clone, Debug)]
struct CompiledFilter {
    id: String,
    mode: FilterMode,
    countries: HashSet<String>,
    nets: Vec<IpNet>,
    users: HashSet<String>,
}

impl CompiledFilter {
    fn matches<S: AsRef<str>>(&self, e: &ClickEvent<S>) -> bool {
        let hit = (self.countries.is_empty() || self.countries.contains(e.country.as_ref()))
            && (self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&e.ip)))
            && (self.users.is_empty() || self.users.contains(e.user_id.as_ref()));
        match self.mode {
            FilterMode::Include => hit,
            FilterMode::Exclude => !hit,
        }
    }
}

/// Slice configuration compiled for fast per-event matching.
#[derive(Clone, Debug)]
pub struct Slicer {
    dimensions: Vec<Dimension>,
    filters: Vec<CompiledFilter>,
}

/// A bad filter definition, named so the operator can find it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("filter {id:?}: {problem}")]
pub struct FilterError {
    /// The offending filter's id (or its position when the id is missing).
    pub id: String,
    /// What is wrong with it.
    pub problem: String,
}

impl Slicer {
    /// Validates and compiles a slice configuration.
    pub fn new(cfg: &SliceConfig) -> Result<Self, FilterError> {
        if cfg.filters.len() > MAX_FILTERS {
            return Err(FilterError {
                id: "*".into(),
                problem: format!("at most {MAX_FILTERS} filters are supported"),
            });
        }
        let mut seen = HashSet::new();
        let mut filters = Vec::new();
        for (i, f) in cfg.filters.iter().enumerate() {
            let err = |problem: String| FilterError {
                id: if f.id.is_empty() {
                    format!("#{i}")
                } else {
                    f.id.clone()
                },
                problem,
            };
            if f.id.is_empty() || f.id.len() > 64 {
                return Err(err("id must be 1..=64 characters".into()));
            }
            if f.id == ALL
                || f.id.contains('=')
                || f.id.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(err(
                    "id must not be \"*\" or contain '=' or whitespace".into()
                ));
            }
            if !seen.insert(f.id.clone()) {
                return Err(err("id is defined twice".into()));
            }
            if f.country.is_empty() && f.ip.is_empty() && f.user_id.is_empty() {
                return Err(err("has no predicate (set country, ip or user_id)".into()));
            }
            let nets = f
                .ip
                .iter()
                .map(|s| {
                    s.parse::<IpNet>()
                        .map_err(|_| err(format!("ip {s:?} is not a CIDR block like 10.0.0.0/8")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            filters.push(CompiledFilter {
                id: f.id.clone(),
                mode: f.mode,
                countries: f.country.iter().cloned().collect(),
                nets,
                users: f.user_id.iter().cloned().collect(),
            });
        }
        Ok(Self {
            dimensions: cfg.dimensions.clone(),
            filters,
        })
    }

    /// Bit mask of the filters `e` belongs to (bit i = filter i).
    pub fn filter_mask<S: AsRef<str>>(&self, e: &ClickEvent<S>) -> u64 {
        self.filters
            .iter()
            .enumerate()
            .filter(|(_, f)| f.matches(e))
            .fold(0u64, |m, (i, _)| m | (1 << i))
    }

    /// All slice names for an event with this country and filter mask.
    pub fn slices(&self, country: &str, mask: u64) -> Vec<String> {
        let mut out = Vec::with_capacity(2 + self.filters.len());
        out.push(ALL.to_owned());
        for d in &self.dimensions {
            match d {
                Dimension::Country => {
                    // Once per event group: built directly, format! costs
                    // several times more.
                    let mut slice = String::with_capacity(8 + country.len());
                    slice.push_str("country=");
                    slice.push_str(country);
                    out.push(slice);
                }
            }
        }
        for (i, f) in self.filters.iter().enumerate() {
            if mask & (1 << i) != 0 {
                out.push(f.id.clone());
            }
        }
        out
    }

    /// All slice names an event belongs to.
    pub fn slices_of(&self, e: &ClickEvent) -> Vec<String> {
        self.slices(&e.country, self.filter_mask(e))
    }

    /// Ids of the named filters, for validating query parameters.
    pub fn filter_ids(&self) -> Vec<String> {
        self.filters.iter().map(|f| f.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    fn ev(country: &str, ip: &str, user: &str) -> ClickEvent {
        ClickEvent {
            ad_id: "ad1".into(),
            ts_ms: 0,
            user_id: user.into(),
            ip: ip.parse().unwrap(),
            country: country.into(),
            event_id: None,
            event_type: EventType::Click,
        }
    }

    fn filter(id: &str) -> FilterDef {
        FilterDef {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn default_slices_are_all_and_country() {
        let s = Slicer::new(&SliceConfig::default()).unwrap();
        assert_eq!(
            s.slices_of(&ev("US", "1.2.3.4", "u")),
            vec!["*", "country=US"]
        );
    }

    #[test]
    fn filters_match_country_cidr_and_user() {
        let cfg = SliceConfig {
            dimensions: vec![],
            filters: vec![
                FilterDef {
                    country: vec!["US".into(), "CA".into()],
                    ..filter("na")
                },
                FilterDef {
                    ip: vec!["10.0.0.0/8".into()],
                    ..filter("internal")
                },
                FilterDef {
                    ip: vec!["10.0.0.0/8".into()],
                    mode: FilterMode::Exclude,
                    ..filter("external")
                },
                FilterDef {
                    user_id: vec!["bot".into()],
                    country: vec!["US".into()],
                    ..filter("us_bot")
                },
            ],
        };
        let s = Slicer::new(&cfg).unwrap();
        assert_eq!(
            s.slices_of(&ev("US", "10.1.2.3", "u")),
            vec!["*", "na", "internal"]
        );
        assert_eq!(
            s.slices_of(&ev("DE", "8.8.8.8", "bot")),
            vec!["*", "external"]
        );
        assert_eq!(
            s.slices_of(&ev("US", "8.8.8.8", "bot")),
            vec!["*", "na", "external", "us_bot"]
        );
        assert_eq!(s.filter_ids(), vec!["na", "internal", "external", "us_bot"]);
    }

    #[test]
    fn bad_filters_are_rejected_by_name() {
        let bad_cidr = SliceConfig {
            dimensions: vec![],
            filters: vec![FilterDef {
                ip: vec!["10.0.0/33".into()],
                ..filter("f1")
            }],
        };
        let e = Slicer::new(&bad_cidr).unwrap_err();
        assert_eq!(e.id, "f1");
        assert!(e.to_string().contains("CIDR"));
        let dup = SliceConfig {
            dimensions: vec![],
            filters: vec![
                FilterDef {
                    country: vec!["US".into()],
                    ..filter("a")
                },
                FilterDef {
                    country: vec!["US".into()],
                    ..filter("a")
                },
            ],
        };
        assert!(Slicer::new(&dup).unwrap_err().to_string().contains("twice"));
        let empty = SliceConfig {
            dimensions: vec![],
            filters: vec![filter("none")],
        };
        assert!(Slicer::new(&empty)
            .unwrap_err()
            .to_string()
            .contains("no predicate"));
        let star = SliceConfig {
            dimensions: vec![],
            filters: vec![FilterDef {
                country: vec!["US".into()],
                ..filter("*")
            }],
        };
        assert!(Slicer::new(&star).is_err());
    }
}
