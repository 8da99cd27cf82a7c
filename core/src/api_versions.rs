//! The Kafka ApiVersions exchange (version 0), to learn whether a broker
//! serves EndTxn before choosing the transactional sink.
//!
//! rdkafka negotiates API versions internally but does not expose the
//! result, and a Kafka protocol crate would be a large dependency for one
//! fixed-layout request; version 0 of this exchange is stable since Kafka
//! 0.10 and every broker answers it.

/// ApiVersions.
pub const API_VERSIONS: i16 = 18;
/// EndTxn: commits or aborts a transaction. tansu 0.6.0 lacks it.
pub const END_TXN: i16 = 26;

/// One API the broker serves, with its version range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiRange {
    /// Kafka API key.
    pub key: i16,
    /// Lowest version served.
    pub min: i16,
    /// Highest version served.
    pub max: i16,
}

/// The size-prefixed ApiVersions v0 request.
pub fn request(correlation_id: i32, client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let id_len = id.len().min(i16::MAX as usize);
    let mut body = Vec::with_capacity(10 + id_len);
    body.extend_from_slice(&API_VERSIONS.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&(id_len as i16).to_be_bytes());
    body.extend_from_slice(&id[..id_len]);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Why a response could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the layout needs.
    Truncated,
    /// The answer to another request.
    Correlation { expected: i32, got: i32 },
    /// The broker refused the request with this Kafka error code.
    Broker(i16),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => write!(f, "truncated ApiVersions response"),
            Self::Correlation { expected, got } => write!(
                f,
                "ApiVersions response for request {got}, expected {expected}"
            ),
            Self::Broker(code) => write!(f, "the broker answered ApiVersions with error {code}"),
        }
    }
}

impl std::error::Error for ParseError {}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(ParseError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }
    fn i16(&mut self) -> Result<i16, ParseError> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Result<i32, ParseError> {
        self.take().map(i32::from_be_bytes)
    }
}

/// Parses an ApiVersions v0 response body (after its size prefix).
pub fn parse_response(body: &[u8], correlation_id: i32) -> Result<Vec<ApiRange>, ParseError> {
    let mut r = Reader(body);
    let got = r.i32()?;
    if got != correlation_id {
        return Err(ParseError::Correlation {
            expected: correlation_id,
            got,
        });
    }
    let error = r.i16()?;
    if error != 0 {
        return Err(ParseError::Broker(error));
    }
    let n = r.i32()?.max(0) as usize;
    // Each entry is 6 bytes; a count larger than the body is a bad frame.
    if n > r.0.len() / 6 {
        return Err(ParseError::Truncated);
    }
    (0..n)
        .map(|_| {
            Ok(ApiRange {
                key: r.i16()?,
                min: r.i16()?,
                max: r.i16()?,
            })
        })
        .collect()
}

/// Whether the broker serves transactions end to end.
pub fn serves_end_txn(apis: &[ApiRange]) -> bool {
    apis.iter().any(|a| a.key == END_TXN && a.max >= a.min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(correlation: i32, error: i16, apis: &[(i16, i16, i16)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&correlation.to_be_bytes());
        b.extend_from_slice(&error.to_be_bytes());
        b.extend_from_slice(&(apis.len() as i32).to_be_bytes());
        for (k, lo, hi) in apis {
            for v in [k, lo, hi] {
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
        b
    }

    #[test]
    fn the_request_has_the_v0_layout() {
        let r = request(7, "adclick");
        assert_eq!(&r[..4], &(r.len() as i32 - 4).to_be_bytes());
        assert_eq!(&r[4..6], &18i16.to_be_bytes());
        assert_eq!(&r[6..8], &0i16.to_be_bytes());
        assert_eq!(&r[8..12], &7i32.to_be_bytes());
        assert_eq!(&r[12..14], &7i16.to_be_bytes());
        assert_eq!(&r[14..], b"adclick");
    }

    #[test]
    fn end_txn_is_found_only_when_served() {
        let with = response(3, 0, &[(0, 0, 9), (26, 0, 3)]);
        let apis = parse_response(&with, 3).unwrap();
        assert_eq!(apis.len(), 2);
        assert!(serves_end_txn(&apis));
        let without = response(3, 0, &[(0, 0, 9), (22, 0, 4)]);
        assert!(!serves_end_txn(&parse_response(&without, 3).unwrap()));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let ok = response(3, 0, &[(26, 0, 3)]);
        for cut in 0..ok.len() {
            assert_eq!(
                parse_response(&ok[..cut], 3),
                Err(ParseError::Truncated),
                "{cut}"
            );
        }
        assert_eq!(
            parse_response(&ok, 4),
            Err(ParseError::Correlation {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            parse_response(&response(3, 35, &[]), 3),
            Err(ParseError::Broker(35))
        );
        let mut huge = response(3, 0, &[]);
        huge[6..10].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(parse_response(&huge, 3), Err(ParseError::Truncated));
    }
}
