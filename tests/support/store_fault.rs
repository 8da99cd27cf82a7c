//! A snapshot store that runs out of space: a small tmpfs over the store's
//! directory (the tests run as root) and a filler file that takes all of it.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a path; unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=`) at `at`.
    pub fn mount(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .context("running mount")?;
        anyhow::ensure!(
            out.status.success(),
            "mounting a tmpfs at {} (the tests run as root): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the file system has not one byte left,
/// then gives back `leave` bytes: room for the coordinator's small files
/// but not for the Aggregates' snapshots, so the nodes' writes fail.
pub fn fill(path: &Path, leave: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    for size in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let block = vec![0u8; size];
        while f.write_all(&block).is_ok() {}
    }
    let len = f.metadata()?.len();
    f.set_len(len.saturating_sub(leave))?;
    Ok(())
}
