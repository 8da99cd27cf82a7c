//! Parsing and validation of query parameters. Pure functions, so every
//! rule ("count > 1000 is a 400 naming count") is unit-tested.

use super::error::ApiError;
use adclick_core::slice::ALL;

/// Largest `count` accepted by `popular_ads`.
pub const MAX_COUNT: u32 = 1000;

/// Latest instant accepted, 9999-12-31T23:59:59.999Z, so sums never overflow.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Earliest instant accepted, 0001-01-01T00:00:00Z (the RFC 3339 range).
pub const MIN_TIME_MS: i64 = -62_135_596_800_000;

/// Longest accepted `country=` code, characters.
pub const MAX_COUNTRY_LEN: usize = 64;

/// Longest accepted `ad_id`, characters.
pub const MAX_AD_ID_LEN: usize = 256;

/// What the API knows about slices, for resolving `filter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filters {
    /// Whether `country=XX` slices are aggregated.
    pub country: bool,
    /// Named filter ids.
    pub ids: Vec<String>,
}

impl Filters {
    /// Human list of accepted values, for the 400 message.
    pub fn known(&self) -> Vec<String> {
        let mut v = vec![ALL.to_string()];
        if self.country {
            v.push("country=<code>".into());
        }
        v.extend(self.ids.iter().cloned());
        v
    }

    /// The slice a `filter` value selects (`*` when absent).
    pub fn resolve(&self, filter: Option<&str>) -> Result<String, ApiError> {
        let f = filter.unwrap_or(ALL);
        let ok = f == ALL
            || (self.country
                && f.strip_prefix("country=")
                    .is_some_and(|c| !c.is_empty() && c.chars().count() <= MAX_COUNTRY_LEN))
            || self.ids.iter().any(|id| id == f);
        if ok {
            Ok(f.to_string())
        } else {
            Err(ApiError::bad(
                "filter",
                format!(
                    "unknown filter {f:?}; known filters: {}",
                    self.known().join(", ")
                ),
            ))
        }
    }
}

/// Parses a time given as epoch milliseconds or RFC 3339.
pub fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    let v = value.trim();
    let digits = v.strip_prefix('-').unwrap_or(v);
    let ms = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<i64>()
            .map_err(|_| ApiError::bad(name, format!("{name} is too large")))?
    } else {
        chrono::DateTime::parse_from_rfc3339(v)
            .map_err(|_| {
                ApiError::bad(
                    name,
                    format!("{name} must be epoch milliseconds or RFC 3339, got {value:?}"),
                )
            })?
            .timestamp_millis()
    };
    if !(MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) {
        return Err(ApiError::bad(
            name,
            format!("{name} must lie between years 1 and 9999"),
        ));
    }
    Ok(ms)
}

/// Parses a positive integer no larger than `max`.
pub fn parse_bounded(name: &str, value: &str, max: u32, why: &str) -> Result<u32, ApiError> {
    let n: u64 = value.trim().parse().map_err(|_| {
        ApiError::bad(
            name,
            format!("{name} must be a positive integer, got {value:?}"),
        )
    })?;
    if n == 0 || n > u64::from(max) {
        return Err(ApiError::bad(
            name,
            format!("{name} must be between 1 and {max} ({why})"),
        ));
    }
    Ok(n as u32)
}

/// Validates an ad id from the path.
pub fn check_ad_id(ad_id: &str) -> Result<(), ApiError> {
    if ad_id.is_empty() || ad_id.chars().count() > MAX_AD_ID_LEN {
        return Err(ApiError::bad(
            "ad_id",
            format!("ad_id must be 1..={MAX_AD_ID_LEN} characters"),
        ));
    }
    Ok(())
}

/// Rounds down to a window boundary.
pub fn floor_to(ms: i64, window_ms: i64) -> i64 {
    ms - ms.rem_euclid(window_ms)
}

/// Rounds up to a window boundary.
pub fn ceil_to(ms: i64, window_ms: i64) -> i64 {
    let f = floor_to(ms, window_ms);
    if f == ms {
        ms
    } else {
        f + window_ms
    }
}

/// Clicks over impressions, or `None` without impressions.
pub fn ctr(clicks: i64, impressions: i64) -> Option<f64> {
    (impressions > 0).then(|| clicks as f64 / impressions as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters() -> Filters {
        Filters {
            country: true,
            ids: vec!["mobile".into()],
        }
    }

    #[test]
    fn filter_accepts_all_countries_and_ids_and_names_the_known_ones() {
        let f = filters();
        assert_eq!(f.resolve(None).unwrap(), "*");
        assert_eq!(f.resolve(Some("country=US")).unwrap(), "country=US");
        assert_eq!(f.resolve(Some("mobile")).unwrap(), "mobile");
        let e = f.resolve(Some("desktop")).unwrap_err();
        assert_eq!(e.body.parameter.as_deref(), Some("filter"));
        assert!(
            e.body.error.contains("mobile") && e.body.error.contains("country=<code>"),
            "{}",
            e.body.error
        );
        assert!(f.resolve(Some("country=")).is_err());
        let no_country = Filters {
            country: false,
            ids: vec![],
        };
        assert!(no_country.resolve(Some("country=US")).is_err());
    }

    #[test]
    fn times_are_epoch_ms_or_rfc3339() {
        assert_eq!(parse_time("from", "60000").unwrap(), 60_000);
        assert_eq!(parse_time("from", "1970-01-01T00:01:00Z").unwrap(), 60_000);
        assert_eq!(
            parse_time("to", "1970-01-01T01:01:00+01:00").unwrap(),
            60_000
        );
        for bad in [
            "",
            "abc",
            "--5",
            "1e9",
            "99999999999999999999",
            "10000-01-01T00:00:00Z",
        ] {
            let e = parse_time("to", bad).unwrap_err();
            assert_eq!(e.body.parameter.as_deref(), Some("to"), "{bad}");
        }
    }

    #[test]
    fn count_and_window_are_bounded_positive_integers() {
        assert_eq!(
            parse_bounded("count", "1000", MAX_COUNT, "max").unwrap(),
            1000
        );
        for bad in ["0", "1001", "ten", "-1", "1.5", ""] {
            assert_eq!(
                parse_bounded("count", bad, MAX_COUNT, "max")
                    .unwrap_err()
                    .body
                    .parameter
                    .as_deref(),
                Some("count")
            );
        }
    }

    #[test]
    fn rounding_to_windows() {
        assert_eq!(floor_to(119_999, 60_000), 60_000);
        assert_eq!(ceil_to(60_001, 60_000), 120_000);
        assert_eq!(ceil_to(120_000, 60_000), 120_000);
        assert_eq!(ctr(1, 0), None);
        assert_eq!(ctr(1, 4), Some(0.25));
    }
}
