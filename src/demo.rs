//! `adclick demo`.
use anyhow::Result;

/// Arguments of `adclick demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {}

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> Result<()> {
    Ok(())
}
