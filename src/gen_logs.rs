//! The generated stream as files: `adclick gen --log-dir`, as an app server
//! would leave it, in a log file rotated by rename, for the log watcher to
//! ship; and `adclick gen --out`, one JSON file for benchmarks.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The file being written; rotated files get `.1`, `.2`, ... appended.
pub const LOG_FILE: &str = "clicks.log";

/// Writes `lines` to `dir/clicks.log`, renaming it to `clicks.log.<k>` after
/// every `rotate_every` lines, at `rate` lines per second (0 = at once).
pub fn write(dir: &Path, lines: &[String], rotate_every: u64, rate: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let current = dir.join(LOG_FILE);
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)
            .with_context(|| format!("opening {}", current.display()))
    };
    let mut file = std::io::BufWriter::new(open()?);
    let started = Instant::now();
    let mut rotated = 0u64;
    for (i, line) in lines.iter().enumerate() {
        let i = i as u64;
        if i > 0 && i.is_multiple_of(rotate_every) {
            file.flush()?;
            rotated += 1;
            let to = dir.join(format!("{LOG_FILE}.{rotated}"));
            std::fs::rename(&current, &to)
                .with_context(|| format!("rotating to {}", to.display()))?;
            file = std::io::BufWriter::new(open()?);
        }
        file.write_all(line.as_bytes())?;
        file.write_all(b"\n")?;
        if rate > 0 {
            file.flush()?;
            let due = Duration::from_secs_f64((i + 1) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    file.flush()?;
    eprintln!(
        "wrote {} lines to {} ({rotated} rotations)",
        lines.len(),
        dir.display()
    );
    Ok(())
}

/// Writes `lines` to `path`, one per line, replacing the file.
pub fn write_json_lines(path: &Path, lines: impl Iterator<Item = String>) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut n = 0u64;
    for line in lines {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {n} records to {}", path.display());
    Ok(())
}
