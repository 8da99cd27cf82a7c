//! The pure half of the log watcher (`adclick ship`): cutting a byte stream
//! into complete lines, telling files apart, and deciding where to resume.
//!
//! A file is known by its device, inode and a fingerprint of its first line.
//! The inode follows a file across rename-and-create rotation; the
//! fingerprint recognises a copy of it (copy-truncate rotation) and a file
//! that was truncated and written again. Offsets are only ever recorded for
//! lines the broker acknowledged.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// How many leading bytes fingerprint a file whose first line is longer.
pub const FINGERPRINT_MAX: usize = 4096;

/// The fingerprint of a file from its first bytes, once its first line is
/// complete (or [`FINGERPRINT_MAX`] bytes long); `None` until then, because
/// a fingerprint must never change while the file grows.
pub fn fingerprint(head: &[u8]) -> Option<u64> {
    let end = match head.iter().position(|b| *b == b'\n') {
        Some(nl) => nl + 1,
        None if head.len() >= FINGERPRINT_MAX => FINGERPRINT_MAX,
        None => return None,
    };
    Some(xxh3_64(&head[..end.min(FINGERPRINT_MAX)]))
}

/// One complete line of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Offset of its first byte.
    pub start: u64,
    /// Offset just after its newline: where reading resumes once it is acked.
    pub end: u64,
    /// 1-based line number in the file.
    pub number: u64,
    /// Its bytes, without the newline (cut at the length limit).
    pub bytes: Vec<u8>,
    /// It was longer than the limit; only its start is kept.
    pub overlong: bool,
}

/// Cuts appended bytes into lines, holding a partial last line until its
/// newline arrives. Memory is bounded by `max_line`.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    partial_len: u64,
    next: u64,
    line: u64,
    max_line: usize,
}

impl LineSplitter {
    /// Starts at `offset`, which is the start of line `lines + 1`.
    pub fn new(offset: u64, lines: u64, max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            partial_len: 0,
            next: offset,
            line: lines,
            max_line: max_line.max(1),
        }
    }

    /// The offset of the first byte not yet part of a returned line.
    pub fn pending_start(&self) -> u64 {
        self.next
    }

    /// Bytes held for a line whose newline has not arrived.
    pub fn held(&self) -> u64 {
        self.partial_len
    }

    /// Feeds the bytes that follow everything fed before.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            self.keep(&bytes[..nl]);
            let len = self.partial_len + 1;
            self.line += 1;
            out.push(Line {
                start: self.next,
                end: self.next + len,
                number: self.line,
                overlong: self.partial_len as usize > self.max_line,
                bytes: std::mem::take(&mut self.partial),
            });
            self.next += len;
            self.partial_len = 0;
            bytes = &bytes[nl + 1..];
        }
        self.keep(bytes);
        out
    }

    /// The held partial line as a line of its own, for a file that will
    /// never grow again (rotated away): it must not vanish silently.
    pub fn finish(&mut self) -> Option<Line> {
        if self.partial_len == 0 {
            return None;
        }
        self.line += 1;
        let line = Line {
            start: self.next,
            end: self.next + self.partial_len,
            number: self.line,
            overlong: self.partial_len as usize > self.max_line,
            bytes: std::mem::take(&mut self.partial),
        };
        self.next = line.end;
        self.partial_len = 0;
        Some(line)
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = self.max_line.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.partial_len += bytes.len() as u64;
    }
}

/// What the state file remembers of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileProgress {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// [`fingerprint`] of its first line.
    pub fingerprint: u64,
    /// Offset after the last line the broker acknowledged.
    pub offset: u64,
    /// Lines up to `offset`, so line numbers survive a restart.
    pub lines: u64,
    /// Where it was last seen, for people reading the file.
    pub path: String,
}

/// The state file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    /// Format version of this file.
    pub version: u32,
    /// Every file seen recently.
    pub files: Vec<FileProgress>,
}

/// The state file format this build writes.
pub const STATE_VERSION: u32 = 1;

impl ShipState {
    /// Where to start reading a file (offset, lines before it). The same
    /// file resumes at its acked offset, unless it is now shorter (it was
    /// truncated and rewritten: read it again from the start). A file with a
    /// known fingerprint at a new inode is a copy (copy-truncate rotation)
    /// and resumes where the original was.
    pub fn start_for(&self, dev: u64, ino: u64, fingerprint: u64, size: u64) -> (u64, u64) {
        if let Some(p) = self
            .files
            .iter()
            .find(|p| p.dev == dev && p.ino == ino && p.fingerprint == fingerprint)
        {
            return if size >= p.offset {
                (p.offset, p.lines)
            } else {
                (0, 0)
            };
        }
        self.files
            .iter()
            .filter(|p| p.fingerprint == fingerprint && size >= p.offset)
            .max_by_key(|p| p.offset)
            .map_or((0, 0), |p| (p.offset, p.lines))
    }

    /// Records a file's acknowledged progress (one entry per device and inode).
    pub fn record(&mut self, progress: FileProgress) {
        self.version = STATE_VERSION;
        match self
            .files
            .iter_mut()
            .find(|p| p.dev == progress.dev && p.ino == progress.ino)
        {
            Some(p) => *p = progress,
            None => self.files.push(progress),
        }
    }

    /// Forgets files for which `gone` holds (deleted, and no copy can
    /// appear any more), keeping the state file small.
    pub fn forget(&mut self, gone: impl Fn(&FileProgress) -> bool) {
        self.files.retain(|p| !gone(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let mut s = LineSplitter::new(0, 0, 100);
        assert!(s.push(b"abc").is_empty());
        assert_eq!(s.held(), 3);
        let lines = s.push(b"def\nxy");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].bytes, b"abcdef");
        assert_eq!((lines[0].start, lines[0].end, lines[0].number), (0, 7, 1));
        let lines = s.push(b"\n\n");
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].start, lines[0].end), (7, 10));
        assert_eq!(lines[1].bytes, b"");
        assert_eq!(s.pending_start(), 11);
        s.push(b"tail");
        let last = s.finish().unwrap();
        assert_eq!(
            (last.start, last.end, last.bytes.as_slice()),
            (11, 15, &b"tail"[..])
        );
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn overlong_lines_are_cut_but_offsets_stay_exact() {
        let mut s = LineSplitter::new(10, 4, 4);
        let lines = s.push(b"0123456789\nok\n");
        assert_eq!(lines[0].bytes, b"0123");
        assert!(lines[0].overlong);
        assert_eq!((lines[0].start, lines[0].end, lines[0].number), (10, 21, 5));
        assert!(!lines[1].overlong);
        assert_eq!((lines[1].start, lines[1].end), (21, 24));
    }

    #[test]
    fn fingerprints_are_fixed_once_the_first_line_is_complete() {
        assert_eq!(fingerprint(b"first li"), None);
        let a = fingerprint(b"first line\n").unwrap();
        assert_eq!(fingerprint(b"first line\nsecond\n"), Some(a));
        assert_ne!(fingerprint(b"other line\n"), Some(a));
        assert!(fingerprint(&[7u8; FINGERPRINT_MAX]).is_some());
    }

    fn progress(ino: u64, fp: u64, offset: u64) -> FileProgress {
        FileProgress {
            dev: 1,
            ino,
            fingerprint: fp,
            offset,
            lines: offset / 10,
            path: "x".into(),
        }
    }

    #[test]
    fn resume_points_follow_rotation_copies_and_truncation() {
        let mut st = ShipState::default();
        st.record(progress(5, 0xaa, 100));
        // The same file (renamed or not) resumes at its acked offset.
        assert_eq!(st.start_for(1, 5, 0xaa, 150), (100, 10));
        // Shorter than what was acked: truncated and rewritten, start over.
        assert_eq!(st.start_for(1, 5, 0xaa, 40), (0, 0));
        // Same inode, new first line: a new file.
        assert_eq!(st.start_for(1, 5, 0xbb, 500), (0, 0));
        // A copy (new inode, same first line) resumes where the original was.
        assert_eq!(st.start_for(1, 9, 0xaa, 120), (100, 10));
        // Unknown files start at the beginning.
        assert_eq!(st.start_for(1, 7, 0xcc, 10), (0, 0));
        st.record(progress(5, 0xaa, 130));
        assert_eq!(st.files.len(), 1);
        st.forget(|p| p.ino == 5);
        assert!(st.files.is_empty());
    }
}
