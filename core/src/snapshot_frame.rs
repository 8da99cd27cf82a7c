//! The frame around every object in the snapshot store: a header with the
//! payload's length and checksum, so that a truncated or corrupted snapshot
//! is detected before it is restored (restoring it could silently drop or
//! invent counts) and recovery can fall back to an older checkpoint.
//!
//! Layout: `0x00 "ACS" version:u8 len:u64le xxh3:u64le payload`. The first
//! byte is 0, which no non-empty protobuf message or JSON document starts
//! with, so objects written before frames existed are told apart and still
//! read (as unverified).

use xxhash_rust::xxh3::xxh3_64;

const MAGIC: [u8; 4] = [0, b'A', b'C', b'S'];
const FRAME_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 4 + 1 + 8 + 8;

/// Why a stored object cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The object has no bytes at all; even an empty payload has a header.
    #[error("the object is empty")]
    Empty,
    /// Fewer bytes than the header says, or than a header needs.
    #[error("truncated: {expected} bytes expected, {found} found")]
    Truncated {
        /// Bytes the header promises (header included).
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// More bytes than the header says.
    #[error("{extra} unexpected bytes after the payload")]
    TrailingBytes {
        /// Bytes past the payload's end.
        extra: u64,
    },
    /// The payload's checksum differs from the stored one.
    #[error("checksum mismatch: stored {stored:016x}, computed {computed:016x}")]
    Checksum {
        /// Checksum in the header.
        stored: u64,
        /// Checksum of the bytes read.
        computed: u64,
    },
    /// Starts like a frame but its magic bytes are wrong.
    #[error("the header's magic bytes are damaged")]
    Magic,
    /// Written by a newer release with another frame layout.
    #[error("frame version {0}; this release reads version {FRAME_VERSION}")]
    Version(u8),
}

/// The header to write before `payload`; kept apart from the payload so a
/// writer can send both without copying a large snapshot.
pub fn header(payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = FRAME_VERSION;
    h[5..13].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[13..21].copy_from_slice(&xxh3_64(payload).to_le_bytes());
    h
}

/// `payload` with its header, as one buffer.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload));
    out.extend_from_slice(payload);
    out
}

/// What a stored object turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// A framed object whose checksum matched; the payload starts at
    /// [`HEADER_LEN`].
    Verified,
    /// An object written before frames existed: read as it is, unchecked.
    Legacy,
}

/// Checks `bytes`; on success the payload is `&bytes[HEADER_LEN..]` for
/// [`Framed::Verified`] and all of `bytes` for [`Framed::Legacy`].
pub fn check(bytes: &[u8]) -> Result<Framed, FrameError> {
    let Some(&first) = bytes.first() else {
        return Err(FrameError::Empty);
    };
    if first != 0 {
        return Ok(Framed::Legacy);
    }
    let found = bytes.len() as u64;
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN as u64,
            found,
        });
    }
    if bytes[..4] != MAGIC {
        return Err(FrameError::Magic);
    }
    if bytes[4] != FRAME_VERSION {
        return Err(FrameError::Version(bytes[4]));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let len = word(5);
    let expected = (HEADER_LEN as u64).saturating_add(len);
    if found < expected {
        return Err(FrameError::Truncated { expected, found });
    }
    if found > expected {
        return Err(FrameError::TrailingBytes {
            extra: found - expected,
        });
    }
    let stored = word(13);
    let computed = xxh3_64(&bytes[HEADER_LEN..]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(Framed::Verified)
}

/// Checks `bytes` and strips the header in place.
pub fn decode(mut bytes: Vec<u8>) -> Result<(Vec<u8>, Framed), FrameError> {
    let framed = check(&bytes)?;
    if framed == Framed::Verified {
        bytes.drain(..HEADER_LEN);
    }
    Ok((bytes, framed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_legacy() {
        let framed = encode(b"hello");
        assert_eq!(framed.len(), HEADER_LEN + 5);
        assert_eq!(
            decode(framed).unwrap(),
            (b"hello".to_vec(), Framed::Verified)
        );
        assert_eq!(decode(encode(b"")).unwrap(), (vec![], Framed::Verified));
        // A protobuf or JSON object from before frames.
        assert_eq!(
            decode(b"{\"actors\":[]}".to_vec()).unwrap().1,
            Framed::Legacy
        );
        assert_eq!(decode(vec![]).unwrap_err(), FrameError::Empty);
    }

    #[test]
    fn damage_is_named() {
        let good = encode(&[7u8; 100]);
        assert!(matches!(
            check(&good[..60]),
            Err(FrameError::Truncated {
                expected: 121,
                found: 60
            })
        ));
        assert!(matches!(
            check(&good[..10]),
            Err(FrameError::Truncated { .. })
        ));
        let mut longer = good.clone();
        longer.push(1);
        assert_eq!(check(&longer), Err(FrameError::TrailingBytes { extra: 1 }));
        let mut flipped = good.clone();
        flipped[70] ^= 0x10;
        let e = check(&flipped).unwrap_err();
        assert!(e.to_string().starts_with("checksum mismatch"), "{e}");
        let mut newer = good;
        newer[4] = 9;
        assert_eq!(check(&newer), Err(FrameError::Version(9)));
    }

    proptest! {
        /// Any single flipped bit and any truncation of a framed object is
        /// detected; nothing is ever read as legacy but a leading non-zero.
        #[test]
        fn every_flip_and_cut_is_caught(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let good = encode(&payload);
            let i = at.index(good.len());
            let mut flipped = good.clone();
            flipped[i] ^= 1 << bit;
            if i == 0 {
                // The leading zero became non-zero: legacy by definition,
                // and never a valid protobuf of the framed payload's kind.
                prop_assert_eq!(check(&flipped), Ok(Framed::Legacy));
            } else {
                prop_assert!(check(&flipped).is_err());
            }
            prop_assert!(check(&good[..i]).is_err());
        }
    }
}
