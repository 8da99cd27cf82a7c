//! Headless Chromium for the UI tests (the dashboard and the console): the
//! pages are loaded as a user's browser would, their DOM dumped after the
//! scripts ran, and screenshots left for review.

use std::path::Path;
use std::process::Command;

fn runs(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The browser to drive, installing Debian's chromium when none is found.
pub fn chromium() -> Result<String, String> {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if runs(c) {
            return Ok(c.to_string());
        }
    }
    crate::try_install("apt-get", &["install", "-y", "-q", "chromium"])?;
    runs("chromium")
        .then(|| "chromium".to_string())
        .ok_or_else(|| "apt-get installed chromium, but it does not run".to_string())
}

/// A headless run of `browser` with its own profile; scripts get 8 s of
/// virtual time before the DOM is dumped or the screenshot taken.
pub fn headless(browser: &str, profile: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
    ])
    .args([
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(["--virtual-time-budget=8000", "--window-size=1280,1000"]);
    c
}

/// The DOM of `url` after its scripts ran.
pub fn dump_dom(browser: &str, profile: &Path, url: &str) -> std::io::Result<String> {
    let out = headless(browser, profile)
        .arg("--dump-dom")
        .arg(url)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Saves a screenshot of `url` to `file`.
pub fn screenshot(browser: &str, profile: &Path, url: &str, file: &Path) -> std::io::Result<()> {
    headless(browser, profile)
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .output()
        .map(|_| ())
}
