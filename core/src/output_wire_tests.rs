use super::*;
use crate::topn::AdClicks;
use proptest::prelude::*;

fn count(ad: &str, window_start: i64, slice: &str, epoch: u64, producer: &str) -> OutputRecord {
    OutputRecord::Count(CountRecord {
        ad_id: ad.into(),
        window_start,
        window_end: window_start + 60_000,
        slice: slice.into(),
        clicks: ad.len() as u64,
        impressions: 7,
        revision: 0,
        epoch,
        producer: producer.into(),
    })
}

fn top(epoch: u64) -> OutputRecord {
    OutputRecord::TopN(TopNRecord {
        window_end: 60_000,
        window_minutes: 1,
        slice: "*".into(),
        ads: vec![AdClicks {
            ad_id: "a".into(),
            clicks: 3,
        }],
        revision: 0,
        epoch,
        producer: "reduce-0".into(),
    })
}

/// Cuts `records` into messages the way a sink does and reads them back.
fn round_trip(records: &[OutputRecord], max: usize) -> (Vec<(String, Vec<u8>)>, Vec<OutputRecord>) {
    let (mut messages, mut back) = (Vec::new(), Vec::new());
    let mut rest = records;
    while !rest.is_empty() {
        let n = next_message_len(rest, max);
        assert!(n >= 1 && n <= max.max(1), "{n} records for a cap of {max}");
        let (mut key, mut payload) = (String::new(), Vec::new());
        encode(&rest[..n], &mut key, &mut payload).unwrap();
        back.extend(decode(&payload).unwrap());
        messages.push((key, payload));
        rest = &rest[n..];
    }
    (messages, back)
}

#[test]
fn one_record_per_message_keeps_the_plain_form_and_key() {
    let r = count("ad1", 0, "*", 4, "aggregate-0");
    let (messages, back) = round_trip(std::slice::from_ref(&r), 1);
    assert_eq!(messages, vec![(r.key(), serde_json::to_vec(&r).unwrap())]);
    assert_eq!(back, vec![r]);
}

#[test]
fn a_run_of_one_window_shares_one_message() {
    let records: Vec<_> = ["a", "bb", "ccc"]
        .iter()
        .map(|ad| count(ad, 0, "country=US", 4, "aggregate-1"))
        .collect();
    let (messages, back) = round_trip(&records, 256);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, "counts/country=US/0/aggregate-1/a");
    let json: serde_json::Value = serde_json::from_slice(&messages[0].1).unwrap();
    assert_eq!(json["kind"], "counts");
    assert_eq!(json["rows"][1], serde_json::json!(["bb", 2, 7, 0]));
    assert_eq!(back, records);
}

#[test]
fn a_run_ends_where_any_shared_field_changes_or_at_the_cap() {
    let records = vec![
        count("a", 0, "*", 4, "aggregate-0"),
        count("b", 0, "*", 4, "aggregate-0"),
        count("c", 60_000, "*", 4, "aggregate-0"),
        count("d", 60_000, "country=US", 4, "aggregate-0"),
        count("e", 60_000, "country=US", 5, "aggregate-0"),
        count("f", 60_000, "country=US", 5, "aggregate-2"),
        top(5),
        count("g", 60_000, "country=US", 5, "aggregate-2"),
        count("h", 60_000, "country=US", 5, "aggregate-2"),
        count("i", 60_000, "country=US", 5, "aggregate-2"),
    ];
    let lens: Vec<usize> = {
        let mut rest = &records[..];
        let mut lens = Vec::new();
        while !rest.is_empty() {
            let n = next_message_len(rest, 2);
            lens.push(n);
            rest = &rest[n..];
        }
        lens
    };
    assert_eq!(lens, vec![2, 1, 1, 1, 1, 1, 2, 1]);
    assert_eq!(round_trip(&records, 2).1, records);
    assert_eq!(next_message_len(&[], 8), 0);
}

#[test]
fn long_ad_ids_cut_a_run_before_the_message_grows_too_large() {
    // Control characters are escaped six bytes each: the worst case.
    let long = |i: usize| format!("{i:04}{}", "\u{1}".repeat(996));
    let records: Vec<_> = (0..300)
        .map(|i| count(&long(i), 0, "*", 4, "aggregate-0"))
        .collect();
    let (messages, back) = round_trip(&records, 10_000);
    assert_eq!(back, records);
    assert!(messages.len() > 1, "300 rows of 6 kB in one message");
    for (_, payload) in &messages {
        assert!(payload.len() <= MAX_PACKED_BYTES, "{} bytes", payload.len());
    }
    // A record too large to share a message still gets one of its own.
    let huge = [count(
        &"x".repeat(MAX_PACKED_BYTES),
        0,
        "*",
        4,
        "aggregate-0",
    )];
    assert_eq!(next_message_len(&huge, 256), 1);
    assert_eq!(round_trip(&huge, 256).1, huge);
}

#[test]
fn encode_refuses_records_that_cannot_share_a_message() {
    let (mut key, mut payload) = (String::new(), Vec::new());
    let mixed = [count("a", 0, "*", 4, "aggregate-0"), top(4)];
    assert!(encode(&mixed, &mut key, &mut payload).is_err());
    let two_windows = [
        count("a", 0, "*", 4, "aggregate-0"),
        count("b", 60_000, "*", 4, "aggregate-0"),
    ];
    assert!(encode(&two_windows, &mut key, &mut payload).is_err());
    assert!(encode(&[], &mut key, &mut payload).is_err());
}

#[test]
fn decode_rejects_what_is_not_a_message_of_the_topic() {
    for bad in [
        &b"not json"[..],
        br#"{"kind":"weather"}"#,
        br#"{"kind":"counts","window_start":0,"window_end":60000,"slice":"*","epoch":1,"producer":"p","rows":[["a",1]]}"#,
        br#"{"kind":"counts","window_start":0,"window_end":60000,"slice":"*","epoch":1,"producer":"p","rows":[["a",-1,0,0]]}"#,
        br#"{"kind":"counts","window_start":0,"slice":"*","epoch":1,"producer":"p","rows":[]}"#,
    ] {
        assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

fn arb_record() -> impl Strategy<Value = OutputRecord> {
    prop_oneof![
        8 => (0u8..6, 0i64..3, prop::bool::ANY, 0u64..3, 0u8..2, 0u64..1000, 0u32..3).prop_map(
            |(ad, w, us, epoch, producer, clicks, revision)| {
                OutputRecord::Count(CountRecord {
                    ad_id: format!("ad-{ad}\"\\é").into(),
                    window_start: w * 60_000,
                    window_end: (w + 1) * 60_000,
                    slice: if us { "country=US" } else { "*" }.into(),
                    clicks,
                    impressions: clicks * 3,
                    revision,
                    epoch,
                    producer: format!("aggregate-{producer}").into(),
                })
            }
        ),
        1 => (0u64..3).prop_map(top),
    ]
}

proptest! {
    /// Whatever the records and the cap, the messages give back exactly
    /// the records written, in order, and no message holds more than the cap.
    #[test]
    fn messages_give_back_exactly_the_records(
        records in prop::collection::vec(arb_record(), 0..60),
        max in 0usize..8,
    ) {
        let (messages, back) = round_trip(&records, max);
        prop_assert_eq!(back, records.clone());
        prop_assert!(messages.len() <= records.len());
    }
}
