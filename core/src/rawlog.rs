//! Log lines as the log watcher (`adclick ship`) finds them on app servers:
//! JSON input events, or the chapter's raw form
//! `[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA`.
//!
//! A line becomes exactly one input record (or one dead letter), and a line
//! without an `event_id` gets one derived from where it sits in its file, so
//! a line that is shipped twice (a crash between the broker's ack and the
//! offset file) is dropped by the Aggregate's dedup instead of counted twice.

use chrono::NaiveDateTime;
use serde_json::{Map, Value};

/// The marker that starts a raw-form line.
pub const RAW_MARKER: &str = "[AdClickEvent]";

/// What one line becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shipped {
    /// The JSON input event to produce.
    Event(String),
    /// Neither form: the reason, for the dead-letter topic.
    Bad(String),
}

impl Shipped {
    /// The event's JSON, if the line was accepted.
    pub fn as_event(&self) -> Option<&str> {
        match self {
            Shipped::Event(j) => Some(j),
            Shipped::Bad(_) => None,
        }
    }
}

/// The deterministic event id of the line at `offset` of the file whose
/// first line has fingerprint `fingerprint`: the same line gets the same id
/// in every run and in a copy of the file (copy-truncate rotation).
pub fn line_event_id(fingerprint: u64, offset: u64) -> String {
    format!("ship-{fingerprint:016x}-{offset}")
}

/// Turns one line (without its newline) into an input event. JSON objects
/// keep every field; only a missing `event_id` is added.
pub fn ship_line(line: &[u8], event_id: &str) -> Shipped {
    let Ok(text) = std::str::from_utf8(line) else {
        return Shipped::Bad("not UTF-8 text".into());
    };
    let text = text.trim_end_matches('\r');
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Shipped::Bad("empty line".into());
    }
    if trimmed.starts_with('{') {
        return match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(mut obj)) => {
                let has_id = obj
                    .get("event_id")
                    .is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
                if !has_id {
                    obj.insert("event_id".into(), Value::String(event_id.into()));
                }
                Shipped::Event(Value::Object(obj).to_string())
            }
            Ok(_) => Shipped::Bad("JSON line is not an object".into()),
            Err(e) => Shipped::Bad(format!("invalid JSON: {e}")),
        };
    }
    match parse_raw(trimmed) {
        Ok(mut obj) => {
            obj.insert("event_id".into(), Value::String(event_id.into()));
            Shipped::Event(Value::Object(obj).to_string())
        }
        Err(reason) => Shipped::Bad(reason),
    }
}

/// Parses the raw form into the fields of a JSON input event. Times in it
/// are UTC; the country is kept as written.
fn parse_raw(line: &str) -> Result<Map<String, Value>, String> {
    let Some(rest) = line.strip_prefix(RAW_MARKER) else {
        return Err(format!("neither a JSON object nor a {RAW_MARKER} line"));
    };
    let fields: Vec<&str> = rest.split(',').map(str::trim).collect();
    let [ad_id, time, user_id, ip, country] = fields[..] else {
        return Err(format!(
            "{RAW_MARKER} line has {} fields, expected 5 (ad, time, user, ip, country)",
            fields.len()
        ));
    };
    if ad_id.is_empty() {
        return Err("raw line: empty ad id".into());
    }
    let ts = NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S")
        .map_err(|e| format!("raw line: bad time {time:?} (want YYYY-MM-DD HH:MM:SS): {e}"))?;
    let mut obj = Map::new();
    obj.insert("ad_id".into(), Value::String(ad_id.into()));
    obj.insert(
        "click_timestamp".into(),
        Value::from(ts.and_utc().timestamp_millis()),
    );
    obj.insert("user_id".into(), Value::String(user_id.into()));
    obj.insert("ip".into(), Value::String(ip.into()));
    obj.insert("country".into(), Value::String(country.into()));
    Ok(obj)
}

/// Writes an event in the raw form (the generator's log files use both
/// forms). Only clicks with a whole-second time have a raw form.
pub fn raw_line(ad_id: &str, ts_ms: i64, user_id: &str, ip: &str, country: &str) -> Option<String> {
    if ts_ms % 1000 != 0
        || [ad_id, user_id, ip, country]
            .iter()
            .any(|f| f.contains(','))
    {
        return None;
    }
    let t = chrono::DateTime::from_timestamp_millis(ts_ms)?;
    Some(format!(
        "{RAW_MARKER} {ad_id}, {}, {user_id}, {ip}, {country}",
        t.format("%Y-%m-%d %H:%M:%S")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(s: &Shipped) -> Value {
        match s {
            Shipped::Event(j) => serde_json::from_str(j).unwrap(),
            Shipped::Bad(r) => panic!("rejected: {r}"),
        }
    }

    #[test]
    fn the_chapters_raw_line_becomes_a_json_event_in_utc() {
        let line = b"[AdClickEvent] ad001, 2022-03-04 00:00:01, user 1, 207.148.22.22, USA";
        let v = event(&ship_line(line, "id-1"));
        assert_eq!(v["ad_id"], "ad001");
        assert_eq!(v["click_timestamp"], 1_646_352_001_000i64);
        assert_eq!(v["user_id"], "user 1");
        assert_eq!(v["ip"], "207.148.22.22");
        assert_eq!(v["country"], "USA");
        assert_eq!(v["event_id"], "id-1");
        let parsed = crate::event::parse_event(
            ship_line(line, "id-1").as_event().unwrap().as_bytes(),
            &crate::event::Limits::default(),
            i64::MAX / 2,
        );
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn json_lines_are_forwarded_with_their_own_id_or_a_stable_one() {
        let with = br#"{"ad_id":"a","click_timestamp":5,"event_id":"mine","extra":1}"#;
        let v = event(&ship_line(with, "ship-x"));
        assert_eq!(v["event_id"], "mine");
        assert_eq!(v["extra"], 1);
        let without = br#"{"ad_id":"a","click_timestamp":5}"#;
        assert_eq!(event(&ship_line(without, "ship-x"))["event_id"], "ship-x");
        assert_eq!(line_event_id(0xab, 42), line_event_id(0xab, 42));
        assert_ne!(line_event_id(0xab, 42), line_event_id(0xab, 43));
    }

    #[test]
    fn anything_else_is_rejected_with_a_reason() {
        for (line, why) in [
            (&b"\xff\xfe\x00garbage"[..], "UTF-8"),
            (b"hello world", "neither"),
            (b"[AdClickEvent] ad1, 2022-03-04 00:00:01, u", "fields"),
            (b"[AdClickEvent] ad1, yesterday, u, 1.2.3.4, US", "bad time"),
            (b"[1,2]", "neither"),
            (b"{\"ad_id\":", "invalid JSON"),
            (b"   ", "empty"),
        ] {
            match ship_line(line, "id") {
                Shipped::Bad(r) => assert!(r.contains(why), "{line:?}: {r}"),
                other => panic!("{line:?} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn raw_lines_round_trip() {
        let line = raw_line("ad7", 1_646_352_001_000, "u9", "10.0.0.1", "KR").unwrap();
        let v = event(&ship_line(line.as_bytes(), "i"));
        assert_eq!(v["click_timestamp"], 1_646_352_001_000i64);
        assert_eq!(v["country"], "KR");
        assert!(raw_line("ad7", 1_646_352_001_500, "u", "ip", "KR").is_none());
    }
}
