//! The files `ship` follows: finding them by glob, telling them apart by
//! (device, inode, fingerprint), noticing truncation and rotation, and
//! reading their new complete lines.

use adclick_core::tail::{
    fingerprint, FileProgress, Line, LineSplitter, ShipState, FINGERPRINT_MAX,
};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Longest line shipped as an event; longer ones go to the DLQ. Well below
/// the 1 MB a Kafka producer and broker accept by default, so a long line
/// can never be refused (and retried) forever.
pub const MAX_LINE: usize = 512 << 10;
/// Most bytes read from one file per poll, so one big file cannot starve the others.
const READ_CHUNK: usize = 1 << 20;
/// Lines after which a poll reads no further file: a poll is one batch of
/// produces and must fit the producer's queue (100k messages), or every
/// attempt would fail with QueueFull and be retried forever.
pub const MAX_LINES_PER_POLL: usize = 50_000;
/// Polls without growth after which a file that no glob matches any more
/// (renamed away and finished) is closed.
const RETIRE_AFTER_IDLE_POLLS: u32 = 25;

/// (device, inode).
pub type FileKey = (u64, u64);

/// One open file being followed.
pub struct Tracked {
    /// Last path it was seen at.
    pub path: Arc<Path>,
    file: File,
    /// Fingerprint of its first line.
    pub fingerprint: u64,
    splitter: LineSplitter,
    /// Bytes of the file consumed into the splitter.
    read_pos: u64,
    /// Acknowledged position (offset, lines).
    pub acked: (u64, u64),
    /// Size at the last poll.
    pub size: u64,
    mtime: SystemTime,
    idle_polls: u32,
    /// When bytes beyond `acked` were first seen (for the age metric).
    pub unshipped_since: Option<Instant>,
}

/// A line read from a file, with where it came from.
pub struct ReadLine {
    /// The file.
    pub key: FileKey,
    /// The file's fingerprint (part of the line's event id).
    pub fingerprint: u64,
    /// The file's path when the line was read.
    pub path: Arc<Path>,
    /// The line.
    pub line: Line,
}

/// Every followed file.
#[derive(Default)]
pub struct Files {
    /// Open files by (device, inode).
    pub tracked: BTreeMap<FileKey, Tracked>,
}

/// Expands the patterns (plain paths or globs) to existing regular files.
pub fn expand(patterns: &[String]) -> Vec<PathBuf> {
    let mut out = BTreeSet::new();
    for p in patterns {
        match glob::glob(p) {
            Ok(paths) => out.extend(paths.flatten().filter(|p| p.is_file())),
            Err(_) if Path::new(p).is_file() => {
                out.insert(PathBuf::from(p));
            }
            Err(e) => tracing::warn!(pattern = %p, "bad glob: {e}"),
        }
    }
    out.into_iter().collect()
}

impl Files {
    /// Finds new files among `paths` and opens them at their resume point;
    /// returns the (device, inode) of every file a pattern matches now.
    pub fn discover(&mut self, paths: &[PathBuf], state: &ShipState) -> BTreeSet<FileKey> {
        let mut present = BTreeSet::new();
        for path in paths {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let key = (meta.dev(), meta.ino());
            present.insert(key);
            if let Some(t) = self.tracked.get_mut(&key) {
                if *t.path != **path {
                    t.path = Arc::from(path.as_path());
                }
                continue;
            }
            match open(path, &meta, state) {
                Ok(Some(t)) => {
                    tracing::info!(path = %path.display(), offset = t.acked.0, "following");
                    self.tracked.insert(key, t);
                }
                Ok(None) => {} // no complete first line yet
                Err(e) => tracing::warn!(path = %path.display(), "cannot open: {e:#}"),
            }
        }
        present
    }

    /// Reads every file's new complete lines: files that were rotated away
    /// first, then the others from the oldest change to the newest, so a
    /// rotated file is finished before its successor is read. A file that
    /// shrank is dropped here and found again (from its start) next poll.
    pub fn read(&mut self, present: &BTreeSet<FileKey>) -> Vec<ReadLine> {
        let mut order: Vec<(bool, SystemTime, FileKey)> = self
            .tracked
            .iter()
            .map(|(k, t)| (present.contains(k), t.mtime, *k))
            .collect();
        order.sort();
        let mut out = Vec::new();
        let mut shrunk = Vec::new();
        for (_, _, key) in order {
            if out.len() >= MAX_LINES_PER_POLL {
                break;
            }
            let Some(t) = self.tracked.get_mut(&key) else {
                continue;
            };
            match t.read_new() {
                Ok(Some(lines)) => out.extend(lines.into_iter().map(|line| ReadLine {
                    key,
                    fingerprint: t.fingerprint,
                    path: t.path.clone(),
                    line,
                })),
                Ok(None) => shrunk.push(key),
                Err(e) => tracing::warn!(path = %t.path.display(), "read failed: {e:#}"),
            }
        }
        for key in shrunk {
            if let Some(t) = self.tracked.remove(&key) {
                tracing::warn!(path = %t.path.display(), "file shrank (truncated): reading it again from the start");
                metrics::counter!("ship_truncations_total").increment(1);
            }
        }
        out
    }

    /// Closes files that no pattern matches any more and that stopped
    /// growing; returns their unfinished last lines (never to be completed).
    pub fn retire(&mut self, present: &BTreeSet<FileKey>) -> Vec<ReadLine> {
        let done: Vec<FileKey> = self
            .tracked
            .iter()
            .filter(|(k, t)| !present.contains(k) && t.idle_polls >= RETIRE_AFTER_IDLE_POLLS)
            .map(|(k, _)| *k)
            .collect();
        let mut leftovers = Vec::new();
        for key in done {
            if let Some(mut t) = self.tracked.remove(&key) {
                tracing::info!(path = %t.path.display(), "finished rotated file");
                if let Some(line) = t.splitter.finish() {
                    leftovers.push(ReadLine {
                        key,
                        fingerprint: t.fingerprint,
                        path: t.path.clone(),
                        line,
                    });
                }
            }
        }
        leftovers
    }

    /// Marks lines up to `line` of `key` acknowledged.
    pub fn ack(&mut self, key: FileKey, line: &Line) {
        if let Some(t) = self.tracked.get_mut(&key) {
            if line.end > t.acked.0 {
                t.acked = (line.end, line.number);
            }
        }
    }

    /// Updates the backlog gauges after a poll: bytes behind per file and
    /// the age of the oldest line not yet acknowledged.
    pub fn report(&mut self) {
        let mut oldest = 0.0f64;
        for t in self.tracked.values_mut() {
            let behind = t.size.saturating_sub(t.acked.0);
            if behind <= t.splitter.held() {
                t.unshipped_since = None;
            }
            if let Some(since) = t.unshipped_since {
                oldest = oldest.max(since.elapsed().as_secs_f64());
            }
            metrics::gauge!("ship_bytes_behind", "file" => t.path.display().to_string())
                .set(behind as f64);
        }
        metrics::gauge!("ship_oldest_unshipped_age_seconds").set(oldest);
    }

    /// Goes back to the acknowledged offsets after a failed produce, so the
    /// lines are read and sent again; the backlog gauges keep counting.
    pub fn rewind(&mut self) {
        let mut broken = Vec::new();
        for (k, t) in self.tracked.iter_mut() {
            if let Err(e) = t.rewind() {
                tracing::warn!(path = %t.path.display(), "cannot rewind, reopening: {e:#}");
                broken.push(*k);
            }
        }
        for k in broken {
            self.tracked.remove(&k);
        }
    }

    /// The acknowledged progress of every open file, for the state file.
    pub fn progress(&self) -> Vec<FileProgress> {
        self.tracked
            .iter()
            .map(|(&(dev, ino), t)| FileProgress {
                dev,
                ino,
                fingerprint: t.fingerprint,
                offset: t.acked.0,
                lines: t.acked.1,
                path: t.path.display().to_string(),
            })
            .collect()
    }
}

fn open(path: &Path, meta: &std::fs::Metadata, state: &ShipState) -> Result<Option<Tracked>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = vec![0u8; FINGERPRINT_MAX];
    let n = read_full(&mut file, &mut head)?;
    let Some(fp) = fingerprint(&head[..n]) else {
        return Ok(None);
    };
    let size = file.metadata()?.len();
    let (offset, lines) = state.start_for(meta.dev(), meta.ino(), fp, size);
    file.seek(SeekFrom::Start(offset))?;
    Ok(Some(Tracked {
        path: Arc::from(path),
        file,
        fingerprint: fp,
        splitter: LineSplitter::new(offset, lines, MAX_LINE),
        read_pos: offset,
        acked: (offset, lines),
        size,
        mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        idle_polls: 0,
        unshipped_since: None,
    }))
}

fn read_full(file: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Tracked {
    fn rewind(&mut self) -> Result<()> {
        self.file.seek(SeekFrom::Start(self.acked.0))?;
        self.read_pos = self.acked.0;
        self.splitter = LineSplitter::new(self.acked.0, self.acked.1, MAX_LINE);
        Ok(())
    }

    /// Whether the file still starts with the line it was fingerprinted by:
    /// a file truncated and rewritten past its old size between two polls
    /// is not shorter, but it is a new file.
    fn same_first_line(&self) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let mut head = vec![0u8; FINGERPRINT_MAX];
        let mut n = 0;
        while n < head.len() {
            match self.file.read_at(&mut head[n..], n as u64)? {
                0 => break,
                k => n += k,
            }
        }
        Ok(fingerprint(&head[..n]) == Some(self.fingerprint))
    }

    /// New complete lines, or `None` when the file is now shorter than
    /// what was read (truncated).
    fn read_new(&mut self) -> Result<Option<Vec<Line>>> {
        let meta = self.file.metadata()?;
        self.size = meta.len();
        if self.size < self.read_pos || !self.same_first_line()? {
            return Ok(None);
        }
        if let Ok(m) = meta.modified() {
            self.mtime = m;
        }
        let want = ((self.size - self.read_pos) as usize).min(READ_CHUNK);
        let mut buf = vec![0u8; want];
        let n = read_full(&mut self.file, &mut buf)?;
        self.read_pos += n as u64;
        self.idle_polls = if n == 0 { self.idle_polls + 1 } else { 0 };
        if self.size > self.acked.0 {
            self.unshipped_since.get_or_insert_with(Instant::now);
        }
        Ok(Some(self.splitter.push(&buf[..n])))
    }
}
