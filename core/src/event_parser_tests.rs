//! The Map's parser (sonic-rs, strings borrowed) against serde_json, the
//! parser it replaced: on valid events and on every kind of damage, both
//! accept the same records with the same fields and reject the same ones.

use super::*;
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000_000;

/// The parser before sonic-rs, kept as the reference.
fn reference(bytes: &[u8], limits: &Limits) -> Result<ClickEvent, Rejection> {
    let raw: RawEvent<'_> =
        serde_json::from_slice(bytes).map_err(|e| Rejection::Malformed(e.to_string()))?;
    let ts_ms = match &raw.click_timestamp {
        RawTimestamp::Millis(ms) => *ms,
        RawTimestamp::Text(t) => parse_timestamp_text(t)
            .ok_or_else(|| Rejection::Invalid(format!("click_timestamp {t:?}")))?,
    };
    build_event(
        FieldsRef {
            ad_id: &raw.ad_id,
            ts_ms,
            user_id: &raw.user_id,
            ip: &raw.ip,
            country: &raw.country,
            event_id: raw.event_id.as_deref(),
            event_type: raw.event_type,
        },
        limits,
        NOW,
    )
}

fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    let ours = parse_event_borrowed(bytes, &limits, NOW).map(ClickEvent::into_owned);
    let theirs = reference(bytes, &limits);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(Rejection::Malformed(_)), Err(Rejection::Malformed(_)))
        | (Err(Rejection::Invalid(_)), Err(Rejection::Invalid(_))) => {}
        _ => prop_assert!(
            false,
            "{:?}: ours {ours:?}, serde_json {theirs:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
    Ok(())
}

pub(super) const VALID: &str = r#"{"ad_id":"ad00042","click_timestamp":1699999990000,"user_id":"user 7","ip":"10.1.2.3","country":"US","event_id":"e-1","event_type":"impression"}"#;

/// Bytes that change a JSON document's meaning.
const SIGNIFICANT: &[u8] = b"\"{}[],:\\u0 .-e+1nt\xff\xc3\x00\n";

pub(super) fn damaged() -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec(
        (
            0..4u8,
            any::<prop::sample::Index>(),
            prop::sample::select(SIGNIFICANT),
        ),
        1..4,
    );
    edits.prop_map(|edits| {
        let mut bytes = VALID.as_bytes().to_vec();
        for (kind, at, b) in edits {
            let i = at.index(bytes.len().max(1));
            match kind {
                0 if !bytes.is_empty() => {
                    bytes.remove(i);
                }
                1 => bytes.insert(i, b),
                2 if !bytes.is_empty() => bytes[i] = b,
                _ => bytes.truncate(i),
            }
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn json_parsers_agree_on_damaged_events(bytes in damaged()) {
        agree(&bytes)?;
    }

    #[test]
    fn json_parsers_agree_on_valid_events(
        ad in "[a-z0-9\\-]{1,20}",
        ts in prop_oneof![Just(None), (0i64..NOW).prop_map(Some)],
        user in "[ -~]{0,12}",
        country in "[A-Z]{0,3}",
        id in prop::option::of("[a-z0-9]{1,8}"),
        kind in prop::sample::select(vec!["\"click\"", "\"impression\"", "\"view\"", "3", "null"]),
        extra in prop::option::of(prop::sample::select(vec![
            r#","unknown":[1,{"a":null}]"#, r#","ad_id":"again""#, r#","click_timestamp":1.5"#,
        ])),
    ) {
        let ts = match ts {
            Some(ms) => ms.to_string(),
            None => "\"2023-11-14T22:13:10.123+02:00\"".to_owned(),
        };
        let id = id.map(|i| format!(r#","event_id":"{i}""#)).unwrap_or_default();
        let line = format!(
            r#"{{"ad_id":{},"click_timestamp":{ts},"user_id":{},"ip":"192.168.0.1","country":"{country}"{id},"event_type":{kind}{}}}"#,
            serde_json::to_string(&ad).unwrap(),
            serde_json::to_string(&user).unwrap(),
            extra.unwrap_or_default(),
        );
        agree(line.as_bytes())?;
    }
}

#[test]
fn json_parsers_agree_on_edge_cases() {
    for line in [
        "",
        "{}",
        "null",
        "[]",
        VALID,
        &format!("{VALID} "),
        &format!("{VALID}x"),
        &format!("{VALID}{VALID}"),
        &format!(" \n{VALID}\n"),
        r#"{"ad_id":"a\u00e9","click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
        r#"{"ad_id":"a\ud800","click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
        r#"{"ad_id":"a","click_timestamp":18446744073709551615,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
        r#"{"ad_id":"a","click_timestamp":1e3,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
        r#"{"ad_id":"a","click_timestamp":-0,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
        r#"{"ad_id":"a","click_timestamp":01,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
        r#"{"ad_id":"a","click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US","event_id":null}"#,
        r#"{"ad_id":"a","click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US",}"#,
        r#"{"ad_id":1,"click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US"}"#,
    ] {
        if let Err(e) = agree(line.as_bytes()) {
            panic!("{e}");
        }
    }
    let invalid_utf8 = b"{\"ad_id\":\"a\xff\",\"click_timestamp\":1,\"user_id\":\"u\",\"ip\":\"1.1.1.1\",\"country\":\"US\"}";
    if let Err(e) = agree(invalid_utf8) {
        panic!("{e}");
    }
}

#[test]
fn borrowed_parse_borrows_plain_strings_and_unescapes_escaped_ones() {
    let line = r#"{"ad_id":"ad\u0030\u00301","click_timestamp":1700000000000,"user_id":"user 1","ip":"10.0.0.1","country":"US","event_id":"e1"}"#;
    let e = parse_event_borrowed(line.as_bytes(), &Limits::default(), NOW).unwrap();
    assert!(
        matches!(e.ad_id, Cow::Owned(_)),
        "escaped: unescaped into a copy"
    );
    assert!(
        matches!(e.country, Cow::Borrowed(_)),
        "plain: borrowed from the input"
    );
    let owned = e.clone().into_owned();
    assert_eq!(owned.ad_id, "ad001");
    assert_eq!(owned.user_id, "user 1");
    assert_eq!(
        e.dedup_key(DedupMode::Content),
        owned.dedup_key(DedupMode::Content)
    );
    let no_id = r#"{"ad_id":"ad1","click_timestamp":1700000000000,"user_id":"u","ip":"10.0.0.1","country":"US"}"#;
    let e = parse_event_borrowed(no_id.as_bytes(), &Limits::default(), NOW).unwrap();
    assert_eq!(
        e.dedup_key(DedupMode::Content),
        e.clone().into_owned().dedup_key(DedupMode::Content)
    );
    // Rejections are the same as the owned parser's, reason included.
    for bad in [
        r#"{"ad_id":"","click_timestamp":1,"user_id":"u","ip":"10.0.0.1","country":"US"}"#,
        r#"{"ad_id":"a b","click_timestamp":1,"user_id":"u","ip":"10.0.0.1","country":"US"}"#,
        r#"{"ad_id":"a","click_timestamp":1,"user_id":"u","ip":"nope","country":"US"}"#,
        r#"{"ad_id":"a","click_timestamp":-1,"user_id":"u","ip":"10.0.0.1","country":"US"}"#,
        r#"not json"#,
    ] {
        let borrowed = parse_event_borrowed(bad.as_bytes(), &Limits::default(), NOW);
        let fields = serde_json::from_str::<serde_json::Value>(bad).ok();
        assert!(borrowed.is_err(), "{bad}");
        if let Some(v) = fields {
            let built = build_event(
                FieldsRef {
                    ad_id: v["ad_id"].as_str().unwrap_or_default(),
                    ts_ms: v["click_timestamp"].as_i64().unwrap_or_default(),
                    user_id: v["user_id"].as_str().unwrap_or_default(),
                    ip: v["ip"].as_str().unwrap_or_default(),
                    country: v["country"].as_str().unwrap_or_default(),
                    event_id: None,
                    event_type: EventType::Click,
                },
                &Limits::default(),
                NOW,
            );
            assert_eq!(borrowed.map(ClickEvent::into_owned), built, "{bad}");
        }
    }
}

#[test]
fn generated_events_borrow_every_string() {
    let line = br#"{"ad_id":"ad27226","click_timestamp":1614729600000,"country":"BR","event_id":"e11-3601","event_type":"impression","ip":"29.144.149.129","user_id":"user9632"}"#;
    let e = parse_event_borrowed(line, &Limits::default(), NOW).unwrap();
    for (name, f) in [
        ("ad_id", &e.ad_id),
        ("user_id", &e.user_id),
        ("country", &e.country),
    ] {
        assert!(matches!(f, Cow::Borrowed(_)), "{name} was copied");
    }
    assert!(
        matches!(e.event_id, Some(Cow::Borrowed(_))),
        "event_id was copied"
    );
}
