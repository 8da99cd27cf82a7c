//! A single-pass scanner for the event shape producers actually send: one
//! flat JSON object of the known fields, plain strings, an integer or text
//! timestamp.
//!
//! Parsing was half of the core path's instructions through serde (field
//! names matched through a visitor, every value dispatched through
//! `deserialize_any`). This scanner reads the common record in one pass and
//! borrows every string. It accepts only what the serde parser accepts
//! with the same fields; anything else (escapes, unknown or repeated
//! fields, floats, negative numbers, missing fields, invalid UTF-8, ...)
//! returns `None` and the record goes through the serde parser, whose
//! answer and message are then the record's. So the accept/reject answers
//! and the dead-letter reasons cannot change (`scan_tests`).

use super::{EventType, RawEvent, RawTimestamp};
use std::borrow::Cow;

/// The record's fields if it has the plain shape, `None` if the serde
/// parser must decide.
pub(super) fn scan(bytes: &[u8]) -> Option<RawEvent<'_>> {
    // One UTF-8 check of the whole record: quotes are ASCII, so every
    // string between them is then valid too.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut c = Cursor {
        text,
        b: bytes,
        i: 0,
    };
    let mut f = Found::default();
    c.skip_ws();
    c.eat(b'{')?;
    loop {
        c.skip_ws();
        let key = c.key()?;
        c.skip_ws();
        c.eat(b':')?;
        c.skip_ws();
        match key {
            Key::AdId => put(&mut f.ad_id, c.string()?)?,
            Key::UserId => put(&mut f.user_id, c.string()?)?,
            Key::Ip => put(&mut f.ip, c.string()?)?,
            Key::Country => put(&mut f.country, c.string()?)?,
            Key::ClickTimestamp => put(&mut f.click_timestamp, c.timestamp()?)?,
            Key::EventId => put(&mut f.event_id, c.optional_string()?)?,
            Key::EventType => put(
                &mut f.event_type,
                match c.string()? {
                    "click" => EventType::Click,
                    "impression" => EventType::Impression,
                    _ => return None,
                },
            )?,
        }
        c.skip_ws();
        match c.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    c.skip_ws();
    if c.i != bytes.len() {
        return None;
    }
    Some(RawEvent {
        ad_id: Cow::Borrowed(f.ad_id?),
        click_timestamp: f.click_timestamp?,
        user_id: Cow::Borrowed(f.user_id?),
        ip: Cow::Borrowed(f.ip?),
        country: Cow::Borrowed(f.country?),
        event_id: f.event_id.flatten().map(Cow::Borrowed),
        event_type: f.event_type.unwrap_or_default(),
    })
}

/// The fields of an event record.
#[derive(Clone, Copy)]
enum Key {
    AdId,
    UserId,
    Ip,
    Country,
    ClickTimestamp,
    EventId,
    EventType,
}

/// The fields seen so far; a second sighting of one sends the record to
/// serde, which rejects duplicate fields.
#[derive(Default)]
struct Found<'a> {
    ad_id: Option<&'a str>,
    click_timestamp: Option<RawTimestamp<'a>>,
    user_id: Option<&'a str>,
    ip: Option<&'a str>,
    country: Option<&'a str>,
    event_id: Option<Option<&'a str>>,
    event_type: Option<EventType>,
}

/// Stores a field's value, or `None` when the field was already present.
fn put<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

struct Cursor<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// JSON's four whitespace bytes.
    #[inline(always)]
    fn skip_ws(&mut self) {
        // Records rarely have any: one compare decides.
        while self.b.get(self.i).is_some_and(|&c| c <= b' ') {
            if !matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                return;
            }
            self.i += 1;
        }
    }

    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A field name, compared in place up to its closing quote. Any other
    /// name (unknown, or escaped) is serde's case.
    fn key(&mut self) -> Option<Key> {
        self.eat(b'"')?;
        let rest = self.b.get(self.i..)?;
        // Each comparison is of a constant length, so it compiles to a
        // couple of word compares rather than a call.
        let (key, len) = match rest.first()? {
            b'a' if rest.starts_with(b"ad_id\"") => (Key::AdId, 6),
            b'u' if rest.starts_with(b"user_id\"") => (Key::UserId, 8),
            b'i' if rest.starts_with(b"ip\"") => (Key::Ip, 3),
            b'c' if rest.starts_with(b"country\"") => (Key::Country, 8),
            b'c' if rest.starts_with(b"click_timestamp\"") => (Key::ClickTimestamp, 16),
            b'e' if rest.starts_with(b"event_id\"") => (Key::EventId, 9),
            b'e' if rest.starts_with(b"event_type\"") => (Key::EventType, 11),
            _ => return None,
        };
        self.i += len;
        Some(key)
    }

    /// A string without escapes or raw control bytes.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = plain_string_len(self.b.get(start..)?)?;
        self.i = start + len + 1;
        self.text.get(start..start + len)
    }

    /// `null` or a plain string.
    fn optional_string(&mut self) -> Option<Option<&'a str>> {
        if self.b.get(self.i..self.i + 4) == Some(b"null") {
            self.i += 4;
            return Some(None);
        }
        self.string().map(Some)
    }

    /// A plain string, or a non-negative integer of at most 18 digits (so
    /// it fits an `i64`) without a leading zero. A fraction or exponent
    /// after the digits fails the caller's check for `,` or `}`.
    fn timestamp(&mut self) -> Option<RawTimestamp<'a>> {
        if self.b.get(self.i) == Some(&b'"') {
            return self.string().map(|t| RawTimestamp::Text(Cow::Borrowed(t)));
        }
        let rest = self.b.get(self.i..)?;
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 18 || (digits > 1 && rest.first() == Some(&b'0')) {
            return None;
        }
        let mut ms = 0i64;
        for &d in rest.get(..digits)? {
            ms = ms * 10 + i64::from(d - b'0');
        }
        self.i += digits;
        Some(RawTimestamp::Millis(ms))
    }
}

/// Bytes spread over a word, for the word-at-a-time search below.
const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// The high bit of each byte of `w` below `n` (`n` ≤ 128). A byte above
/// a flagged one may be flagged falsely (the subtraction borrows), so only
/// the lowest flag is exact, which is the one used.
fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// Whether every byte of `b` is printable ASCII from `lowest` (a space or
/// `!`) to `~`: the common case of a field's validation, eight bytes at a
/// time. Flags beyond the first true one do not matter here: any flag
/// means "no".
pub(super) fn printable_ascii(b: &[u8], lowest: u8) -> bool {
    let mut words = b.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        if bytes_below(w, lowest) | (w & HIGHS) | bytes_below(w ^ (ONES * 0x7f), 1) != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|c| (lowest..=b'~').contains(c))
}

/// The length of a string's body up to its closing quote, or `None` when
/// an escape (an escaped quote included) or a raw control byte comes
/// first, or the quote never comes: the cases left to serde. Eight bytes
/// at a time: ids and names are mostly shorter than two words.
fn plain_string_len(b: &[u8]) -> Option<usize> {
    let stop = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
    let mut at = 0;
    while let Some(word) = b.get(at..at + 8) {
        let w = u64::from_le_bytes(word.try_into().ok()?);
        let flags = bytes_below(w ^ (ONES * u64::from(b'"')), 1)
            | bytes_below(w ^ (ONES * u64::from(b'\\')), 1)
            | bytes_below(w, 0x20);
        if flags != 0 {
            at += (flags.trailing_zeros() / 8) as usize;
            return (b.get(at) == Some(&b'"')).then_some(at);
        }
        at += 8;
    }
    let tail = b.get(at..)?.iter().position(|&c| stop(c))?;
    (b.get(at + tail) == Some(&b'"')).then_some(at + tail)
}

#[cfg(test)]
#[path = "event_scan_tests.rs"]
mod scan_tests;
