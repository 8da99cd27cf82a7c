//! Input events: parsing, validation and dedup keys.
//!
//! Every rejection carries a reason that is written to the dead-letter topic,
//! so a bad record is never silently lost.

use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::IpAddr;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// What kind of ad interaction an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A billable click (the default when the field is absent).
    #[default]
    Click,
    /// An impression, counted next to clicks so CTR can be served.
    Impression,
}

/// A validated click or impression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickEvent<S = String> {
    /// The ad that was clicked.
    pub ad_id: S,
    /// Event time in epoch milliseconds.
    pub ts_ms: i64,
    /// The user who clicked.
    pub user_id: S,
    /// Client address, used by CIDR filters.
    pub ip: IpAddr,
    /// Country code, a group-by dimension.
    pub country: S,
    /// Producer-assigned unique id, used for deduplication.
    pub event_id: Option<S>,
    /// Click or impression.
    pub event_type: EventType,
}

/// How duplicates are recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DedupMode {
    /// By `event_id`; events without one are counted as they come.
    #[default]
    EventId,
    /// By `event_id` when present, else by a hash of all fields.
    Content,
    /// No deduplication.
    None,
}

/// Validation limits. They bound what a single adversarial record can cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum length in bytes of `ad_id`, `user_id`, `country`, `event_id`.
    pub max_field_len: usize,
    /// How far in the future (from wall clock) an event time may be.
    pub max_future_skew_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_field_len: 128,
            max_future_skew_ms: 5 * 60_000,
        }
    }
}

/// Why a record was rejected; the text goes to the DLQ.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not JSON, or not the expected shape.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Well-formed but breaks a validation rule.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// `click_timestamp` as sent: epoch ms, or text.
///
/// Deserialised by hand rather than as an untagged enum: serde buffers an
/// untagged value into an intermediate tree before trying each variant,
/// which cost more than the rest of the record's parsing together.
enum RawTimestamp<'a> {
    Millis(i64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTimestamp<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = RawTimestamp<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("epoch milliseconds or a timestamp string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTimestamp::Millis(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(RawTimestamp::Millis)
                    .map_err(|_| E::custom(format_args!("click_timestamp {v} is out of range")))
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(RawTimestamp::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTimestamp::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    ad_id: Cow<'a, str>,
    #[serde(borrow)]
    click_timestamp: RawTimestamp<'a>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    ip: Cow<'a, str>,
    #[serde(borrow)]
    country: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "borrowed_option")]
    event_id: Option<Cow<'a, str>>,
    #[serde(default)]
    event_type: EventType,
}

/// An optional string, borrowed when unescaped: serde's `borrow` does not
/// reach through `Option`, which would copy every event id.
fn borrowed_option<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// Parses a timestamp given as RFC 3339 text, `YYYY-MM-DD HH:MM:SS` (UTC, the
/// log-line form) or epoch milliseconds written as text.
pub fn parse_timestamp_text(text: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp_millis());
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Some(dt.and_utc().timestamp_millis());
    }
    text.parse::<i64>().ok()
}

/// The instant an event time is compared with for `job.max_future_skew_ms`:
/// the Kafka record's timestamp, and the wall clock only for a record that
/// has none. Every reader of a record (the Map, a replay, a reconcile, a
/// recovery reading it again) then decides the same, whatever its clock:
/// a node whose clock is off changes no count.
pub fn future_reference(record_timestamp_ms: Option<i64>, wall_clock_ms: i64) -> i64 {
    record_timestamp_ms.unwrap_or(wall_clock_ms)
}

/// Parses and validates one JSON event. `now_ms` is the reference of the
/// future-skew limit ([`future_reference`]).
pub fn parse_event(bytes: &[u8], limits: &Limits, now_ms: i64) -> Result<ClickEvent, Rejection> {
    parse_event_borrowed(bytes, limits, now_ms).map(ClickEvent::into_owned)
}

/// [`parse_event`] without copying the strings: they borrow from `bytes`
/// unless the JSON escaped them. The Map's hot path: it keeps an id or a
/// country only when it starts a new group, so most events allocate
/// nothing. Accepts and rejects exactly what [`parse_event`] does.
pub fn parse_event_borrowed<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    now_ms: i64,
) -> Result<ClickEvent<Cow<'a, str>>, Rejection> {
    // The plain shape is scanned by hand; the rest goes through serde.
    let raw = match scan::scan(bytes) {
        Some(raw) => raw,
        None => parse_with_serde(bytes)?,
    };
    let ts_ms = match &raw.click_timestamp {
        RawTimestamp::Millis(ms) => *ms,
        RawTimestamp::Text(t) => parse_timestamp_text(t).ok_or_else(|| {
            Rejection::Invalid(format!(
                "click_timestamp {:?} is not RFC 3339 or epoch ms",
                truncate(t)
            ))
        })?,
    };
    let ip = validate(
        &FieldsRef {
            ad_id: &raw.ad_id,
            ts_ms,
            user_id: &raw.user_id,
            ip: &raw.ip,
            country: &raw.country,
            event_id: raw.event_id.as_deref(),
            event_type: raw.event_type,
        },
        limits,
        now_ms,
    )?;
    Ok(ClickEvent {
        ad_id: raw.ad_id,
        ts_ms,
        user_id: raw.user_id,
        ip,
        country: raw.country,
        event_id: raw.event_id,
        event_type: raw.event_type,
    })
}

/// The serde parsers' reading of a record, for whatever the scanner leaves
/// to them.
fn parse_with_serde(bytes: &[u8]) -> Result<RawEvent<'_>, Rejection> {
    // sonic-rs parses in fewer instructions than serde_json, with the same
    // serde model. It rejects a little more (invalid UTF-8 inside a field
    // the event ignores), so a record it rejects, which is rare, gets
    // serde_json's answer and message: the answers are serde_json's
    // (`parser_tests`).
    match sonic_rs::from_slice(bytes) {
        Ok(raw) => Ok(raw),
        Err(_) => serde_json::from_slice(bytes).map_err(|e| Rejection::Malformed(e.to_string())),
    }
}

/// Borrowed fields of an event before validation, shared by the JSON and
/// log-line parsers.
pub struct FieldsRef<'a> {
    /// See [`ClickEvent::ad_id`].
    pub ad_id: &'a str,
    /// See [`ClickEvent::ts_ms`].
    pub ts_ms: i64,
    /// See [`ClickEvent::user_id`].
    pub user_id: &'a str,
    /// Unparsed client address.
    pub ip: &'a str,
    /// See [`ClickEvent::country`].
    pub country: &'a str,
    /// See [`ClickEvent::event_id`].
    pub event_id: Option<&'a str>,
    /// See [`ClickEvent::event_type`].
    pub event_type: EventType,
}

/// Validates borrowed fields and builds an owned event.
pub fn build_event(
    f: FieldsRef<'_>,
    limits: &Limits,
    now_ms: i64,
) -> Result<ClickEvent, Rejection> {
    let ip = validate(&f, limits, now_ms)?;
    Ok(ClickEvent {
        ad_id: f.ad_id.to_owned(),
        ts_ms: f.ts_ms,
        user_id: f.user_id.to_owned(),
        ip,
        country: f.country.to_owned(),
        event_id: f.event_id.map(str::to_owned),
        event_type: f.event_type,
    })
}

/// The checks every parser applies; the parsed client address on success.
fn validate(f: &FieldsRef<'_>, limits: &Limits, now_ms: i64) -> Result<IpAddr, Rejection> {
    check_field("ad_id", f.ad_id, limits, false)?;
    check_field("user_id", f.user_id, limits, true)?;
    check_field("country", f.country, limits, false)?;
    if let Some(id) = f.event_id {
        check_field("event_id", id, limits, false)?;
    }
    if f.ts_ms < 0 {
        return Err(Rejection::Invalid(format!(
            "click_timestamp {} is before 1970",
            f.ts_ms
        )));
    }
    if f.ts_ms > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(Rejection::Invalid(format!(
            "click_timestamp {} is more than {} ms ahead of wall clock {}",
            f.ts_ms, limits.max_future_skew_ms, now_ms
        )));
    }
    f.ip.trim()
        .parse()
        .map_err(|_| Rejection::Invalid(format!("ip {:?} is not an IP address", truncate(f.ip))))
}

fn check_field(
    name: &str,
    value: &str,
    limits: &Limits,
    allow_space: bool,
) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::Invalid(format!("{name} is empty")));
    }
    if value.len() > limits.max_field_len {
        return Err(Rejection::Invalid(format!(
            "{name} is {} bytes, longer than max_field_len {}",
            value.len(),
            limits.max_field_len
        )));
    }
    // Printable ASCII (with the space where allowed) passes the check below
    // without decoding characters; other bytes take the full check.
    if scan::printable_ascii(value.as_bytes(), if allow_space { b' ' } else { b'!' }) {
        return Ok(());
    }
    if value
        .chars()
        .any(|c| c.is_control() || (!allow_space && c.is_whitespace()))
    {
        return Err(Rejection::Invalid(format!(
            "{name} {:?} contains whitespace or control characters",
            value
        )));
    }
    Ok(())
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses the raw log-line form that `ship` tails:
/// `[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA`.
pub fn parse_log_line(line: &str, limits: &Limits, now_ms: i64) -> Result<ClickEvent, Rejection> {
    let rest = line
        .trim()
        .strip_prefix("[AdClickEvent]")
        .ok_or_else(|| Rejection::Malformed("line does not start with [AdClickEvent]".into()))?;
    let parts: Vec<&str> = rest.split(',').map(str::trim).collect();
    let [ad_id, ts, user, ip, country] = parts.as_slice() else {
        return Err(Rejection::Malformed(format!(
            "expected 5 comma-separated fields, got {}",
            parts.len()
        )));
    };
    let ts_ms = parse_timestamp_text(ts)
        .ok_or_else(|| Rejection::Invalid(format!("timestamp {:?} is not valid", truncate(ts))))?;
    build_event(
        FieldsRef {
            ad_id,
            ts_ms,
            user_id: user,
            ip,
            country,
            event_id: None,
            event_type: EventType::Click,
        },
        limits,
        now_ms,
    )
}

impl<S: AsRef<str>> ClickEvent<S> {
    /// The event with its strings owned.
    pub fn into_owned(self) -> ClickEvent
    where
        S: Into<String>,
    {
        ClickEvent {
            ad_id: self.ad_id.into(),
            ts_ms: self.ts_ms,
            user_id: self.user_id.into(),
            ip: self.ip,
            country: self.country.into(),
            event_id: self.event_id.map(Into::into),
            event_type: self.event_type,
        }
    }

    /// The key used to recognise a duplicate of this event, or `None` when it
    /// cannot be deduplicated under `mode`. Keys are scoped to one
    /// (ad, window) by the caller, which keeps 64-bit collisions negligible.
    pub fn dedup_key(&self, mode: DedupMode) -> Option<u64> {
        if let (DedupMode::EventId | DedupMode::Content, Some(id)) =
            (mode, self.event_id.as_ref().map(AsRef::as_ref))
        {
            // Hot path, once per event: hash the same bytes as the streaming
            // form below in one shot from a stack buffer (xxh3 gives the same
            // digest either way), avoiding the streaming state's set-up.
            let mut buf = [0u8; 4 + 124];
            if let Some(dst) = buf.get_mut(4..4 + id.len()) {
                dst.copy_from_slice(id.as_bytes());
                buf[0] = self.event_type as u8;
                buf[1..4].copy_from_slice(b"id\0");
                return Some(xxh3_64(&buf[..4 + id.len()]));
            }
        }
        let mut h = Xxh3::new();
        h.update(&[self.event_type as u8]);
        match (mode, self.event_id.as_ref().map(AsRef::as_ref)) {
            (DedupMode::None, _) => return None,
            (_, Some(id)) => {
                h.update(b"id\0");
                h.update(id.as_bytes());
            }
            (DedupMode::EventId, None) => return None,
            (DedupMode::Content, None) => {
                h.update(b"content\0");
                for part in [
                    self.ad_id.as_ref().as_bytes(),
                    self.user_id.as_ref().as_bytes(),
                    self.country.as_ref().as_bytes(),
                ] {
                    h.update(&(part.len() as u64).to_le_bytes());
                    h.update(part);
                }
                h.update(&self.ts_ms.to_le_bytes());
                h.update(self.ip.to_string().as_bytes());
            }
        }
        Some(h.digest())
    }
}

#[path = "event_scan.rs"]
mod scan;

#[cfg(test)]
#[path = "event_parser_tests.rs"]
mod parser_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn parse(s: &str) -> Result<ClickEvent, Rejection> {
        parse_event(s.as_bytes(), &Limits::default(), NOW)
    }

    #[test]
    fn parses_rfc3339_and_epoch_ms() {
        let a = parse(r#"{"ad_id":"ad001","click_timestamp":"2021-03-03T00:00:01Z","user_id":"user1","ip":"207.148.22.22","country":"USA"}"#).unwrap();
        assert_eq!(a.ts_ms, 1_614_729_601_000);
        assert_eq!(a.event_type, EventType::Click);
        let b = parse(r#"{"ad_id":"ad001","click_timestamp":1614729601000,"user_id":"user1","ip":"::1","country":"USA","event_type":"impression","event_id":"e1"}"#).unwrap();
        assert_eq!(b.ts_ms, a.ts_ms);
        assert_eq!(b.event_type, EventType::Impression);
        assert_eq!(b.event_id.as_deref(), Some("e1"));
    }

    #[test]
    fn the_future_limit_is_judged_against_the_record_not_the_reader() {
        let wall = 1_700_000_000_000i64;
        let ahead = wall + 10 * 60_000;
        let e = format!(
            r#"{{"ad_id":"a","click_timestamp":{ahead},"user_id":"u","ip":"1.2.3.4","country":"US"}}"#
        );
        let limits = Limits::default();
        // A record stamped when it was produced is judged the same by a
        // reader whose clock is 10 minutes behind or ahead.
        for reader_clock in [wall - 600_000, wall, wall + 600_000] {
            let at = future_reference(Some(ahead - 1000), reader_clock);
            assert!(parse_event(e.as_bytes(), &limits, at).is_ok());
            let at = future_reference(Some(wall), reader_clock);
            assert!(parse_event(e.as_bytes(), &limits, at).is_err());
        }
        // Without a record timestamp, the wall clock decides.
        assert!(parse_event(e.as_bytes(), &limits, future_reference(None, wall)).is_err());
    }

    #[test]
    fn rejects_with_reasons() {
        assert!(matches!(parse("not json"), Err(Rejection::Malformed(_))));
        let missing = parse(r#"{"ad_id":"a","click_timestamp":1}"#).unwrap_err();
        assert!(missing.to_string().contains("user_id"), "{missing}");
        let long = format!(
            r#"{{"ad_id":"{}","click_timestamp":1,"user_id":"u","ip":"1.2.3.4","country":"US"}}"#,
            "x".repeat(1 << 20)
        );
        assert!(parse(&long)
            .unwrap_err()
            .to_string()
            .contains("max_field_len"));
        let future = r#"{"ad_id":"a","click_timestamp":"2100-01-01T00:00:00Z","user_id":"u","ip":"1.2.3.4","country":"US"}"#;
        assert!(parse(future)
            .unwrap_err()
            .to_string()
            .contains("ahead of wall clock"));
        let bad_ip =
            r#"{"ad_id":"a","click_timestamp":1,"user_id":"u","ip":"999.1.1.1","country":"US"}"#;
        assert!(parse(bad_ip).unwrap_err().to_string().contains("ip"));
        let bad_type = r#"{"ad_id":"a","click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US","event_type":"view"}"#;
        assert!(matches!(parse(bad_type), Err(Rejection::Malformed(_))));
    }

    #[test]
    fn parses_log_lines() {
        let e = parse_log_line(
            "[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA",
            &Limits::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(e.ad_id, "ad001");
        assert_eq!(e.user_id, "user 1");
        assert_eq!(e.ts_ms, 1_646_352_001_000);
        assert!(parse_log_line("ad001, x", &Limits::default(), NOW).is_err());
    }

    #[test]
    fn dedup_keys_follow_the_mode() {
        let mut e = parse(
            r#"{"ad_id":"a","click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
        )
        .unwrap();
        assert_eq!(e.dedup_key(DedupMode::EventId), None);
        assert!(e.dedup_key(DedupMode::Content).is_some());
        assert_eq!(e.dedup_key(DedupMode::None), None);
        let content = e.dedup_key(DedupMode::Content);
        e.event_id = Some("id-1".into());
        assert_eq!(
            e.dedup_key(DedupMode::EventId),
            e.dedup_key(DedupMode::Content)
        );
        assert_ne!(e.dedup_key(DedupMode::EventId), content);
        let mut imp = e.clone();
        imp.event_type = EventType::Impression;
        assert_ne!(
            imp.dedup_key(DedupMode::EventId),
            e.dedup_key(DedupMode::EventId)
        );
    }

    /// Keys are stored in snapshots, so the one-shot fast path must give
    /// exactly the streaming digest, for short and long ids.
    #[test]
    fn dedup_key_fast_path_equals_streaming_form() {
        let mut e = parse(
            r#"{"ad_id":"a","click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
        )
        .unwrap();
        for len in [1, 10, 123, 124, 125, 128] {
            for t in [EventType::Click, EventType::Impression] {
                let id = "x".repeat(len);
                let mut h = Xxh3::new();
                h.update(&[t as u8]);
                h.update(b"id\0");
                h.update(id.as_bytes());
                e.event_id = Some(id);
                e.event_type = t;
                assert_eq!(
                    e.dedup_key(DedupMode::EventId),
                    Some(h.digest()),
                    "len {len}"
                );
                assert_eq!(
                    e.dedup_key(DedupMode::Content),
                    Some(h.digest()),
                    "len {len}"
                );
            }
        }
    }
}
