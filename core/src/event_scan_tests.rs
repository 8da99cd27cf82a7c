//! The scanner against the serde parser it stands in front of: whatever it
//! accepts, serde reads with the same fields; what producers send, it
//! accepts; everything unusual it leaves to serde.

use super::super::parser_tests::{damaged, VALID};
use super::super::{parse_with_serde, RawEvent, RawTimestamp};
use super::{plain_string_len, printable_ascii, scan};
use proptest::prelude::*;

/// A comparable view of a record's fields.
fn view(r: &RawEvent<'_>) -> String {
    let ts = match &r.click_timestamp {
        RawTimestamp::Millis(ms) => format!("ms {ms}"),
        RawTimestamp::Text(t) => format!("text {t:?}"),
    };
    format!(
        "{:?} {ts} {:?} {:?} {:?} {:?} {:?}",
        r.ad_id, r.user_id, r.ip, r.country, r.event_id, r.event_type
    )
}

/// If the scanner answers, serde answers the same.
fn scanner_agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(ours) = scan(bytes) {
        match parse_with_serde(bytes) {
            Ok(theirs) => prop_assert_eq!(view(&ours), view(&theirs)),
            Err(e) => prop_assert!(
                false,
                "scanner accepted what serde rejects ({e}): {:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }
    Ok(())
}

/// JSON whitespace, or none.
fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\n", "\t ", "\r\n"])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn word_at_a_time_printable_check_agrees_with_a_byte_loop(
        bytes in prop::collection::vec(
            prop_oneof![
                6 => 0x21u8..0x7f,
                1 => prop::sample::select(vec![0x00, 0x1f, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0xc3, 0xff]),
            ],
            0..40,
        ),
        lowest in prop::sample::select(vec![b' ', b'!']),
    ) {
        let expected = bytes.iter().all(|c| (lowest..=b'~').contains(c));
        prop_assert_eq!(printable_ascii(&bytes, lowest), expected);
    }

    #[test]
    fn word_at_a_time_search_finds_what_a_byte_loop_finds(
        bytes in prop::collection::vec(
            prop_oneof![
                4 => 0x20u8..0x7f,
                1 => prop::sample::select(vec![b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'!']),
            ],
            0..40,
        )
    ) {
        let first = bytes.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        let expected = first.filter(|&i| bytes[i] == b'"');
        prop_assert_eq!(plain_string_len(&bytes), expected);
    }

    #[test]
    fn scanner_agrees_with_serde_on_damaged_events(bytes in damaged()) {
        scanner_agrees(&bytes)?;
    }

    #[test]
    fn scanner_reads_plain_events_in_any_order_and_spacing(
        order in Just((0..7usize).collect::<Vec<_>>()).prop_shuffle(),
        keep_optional in (any::<bool>(), any::<bool>()),
        spaces in prop::collection::vec(ws(), 30),
        ad in "[a-z0-9\\-]{1,20}",
        ts in prop_oneof![
            (0i64..999_999_999_999_999_999).prop_map(|ms| ms.to_string()),
            Just("\"2023-11-14T22:13:10.123+02:00\"".to_owned()),
            Just("0".to_owned()),
        ],
        user in "[ -!#-\\[\\]-~é]{0,12}",
        id in prop_oneof![Just("null".to_owned()), "[a-z0-9]{1,8}".prop_map(|i| format!("\"{i}\""))],
        kind in prop::sample::select(vec!["\"click\"", "\"impression\""]),
    ) {
        let fields = [
            ("ad_id", format!("\"{ad}\"")),
            ("click_timestamp", ts),
            ("user_id", format!("\"{user}\"")),
            ("ip", "\"192.168.0.1\"".to_owned()),
            ("country", "\"US\"".to_owned()),
            ("event_id", id),
            ("event_type", kind.to_owned()),
        ];
        let mut s = spaces.iter();
        let mut w = || *s.next().unwrap_or(&"");
        let mut line = format!("{}{{", w());
        let mut first = true;
        for i in order {
            let optional_dropped = (i == 5 && !keep_optional.0) || (i == 6 && !keep_optional.1);
            if optional_dropped {
                continue;
            }
            let (k, v) = &fields[i];
            if !first {
                line.push(',');
            }
            first = false;
            line.push_str(&format!("{}\"{k}\"{}:{}{v}{}", w(), w(), w(), w()));
        }
        line.push_str(&format!("}}{}", w()));
        prop_assert!(scan(line.as_bytes()).is_some(), "not scanned: {line:?}");
        scanner_agrees(line.as_bytes())?;
    }
}

#[test]
fn producers_records_take_the_scanner() {
    let generated = br#"{"ad_id":"ad27226","click_timestamp":1614729600000,"country":"BR","event_id":"e11-3601","event_type":"impression","ip":"29.144.149.129","user_id":"user9632"}"#;
    let chapter = br#"{"ad_id":"ad001","click_timestamp":"2021-03-03T00:00:01Z","user_id":"user1","ip":"207.148.22.22","country":"USA"}"#;
    for line in [&generated[..], &chapter[..], VALID.as_bytes()] {
        assert!(scan(line).is_some(), "{}", String::from_utf8_lossy(line));
    }
}

#[test]
fn unusual_records_are_left_to_serde() {
    let base = |ts: &str, extra: &str| {
        format!(
            r#"{{"ad_id":"a","click_timestamp":{ts},"user_id":"u","ip":"1.1.1.1","country":"US"{extra}}}"#
        )
    };
    for line in [
        String::new(),
        "{}".to_owned(),
        "null".to_owned(),
        base("1", ","),
        base("1", r#","ad_id":"again""#),
        base("1", r#","unknown":1"#),
        base("1", r#","event_type":"view""#),
        base("1", r#","event_type":null"#),
        base("1", r#","event_id":nul"#),
        base("1.5", ""),
        base("1e3", ""),
        base("-1", ""),
        base("01", ""),
        base("1234567890123456789", ""),
        base("\"a\\u0030\"", ""),
        base("1", "") + "x",
        base("1", "").replace("\"a\"", "\"a\\\"b\""),
        base("1", "").replace("\"a\"", "\"a\tb\""),
        r#"{"click_timestamp":1,"user_id":"u","ip":"1.1.1.1","country":"US"}"#.to_owned(),
    ] {
        assert!(scan(line.as_bytes()).is_none(), "scanned: {line:?}");
    }
    let invalid_utf8 = b"{\"ad_id\":\"a\xff\",\"click_timestamp\":1,\"user_id\":\"u\",\"ip\":\"1.1.1.1\",\"country\":\"US\"}";
    assert!(scan(invalid_utf8).is_none());
}
