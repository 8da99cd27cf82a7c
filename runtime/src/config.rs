//! Loads `adclick.toml` with `ADCLICK_<SECTION>__<KEY>` environment
//! overrides, then validates it. A bad file or value exits the process with
//! a message naming the key.

use adclick_core::config::Config;
use anyhow::{bail, Context, Result};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use std::path::Path;

/// Loads the configuration from `path` (if given) plus the environment.
pub fn load(path: Option<&Path>) -> Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(p) = path {
        if !p.exists() {
            bail!("config file {} does not exist", p.display());
        }
        fig = fig.merge(Toml::file_exact(p));
    }
    // Only double-underscore variables are config keys; ADCLICK_CONFIG,
    // ADCLICK_NODES and friends belong to scripts.
    fig = fig.merge(
        Env::prefixed("ADCLICK_")
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    let cfg = checked(fig)?;
    check_kafka_security(&cfg)?;
    crate::kafka::check_source_consumer(&cfg.kafka)?;
    crate::kafka::use_security(&cfg.kafka.security);
    crate::grpc::use_tls(&cfg.grpc_tls)?;
    Ok(cfg)
}

/// What only the process that uses `[kafka.security]` can check: its
/// password is set, and the files it names can be read.
fn check_kafka_security(cfg: &Config) -> Result<()> {
    let s = &cfg.kafka.security;
    if s.missing_password() {
        bail!(
            "invalid configuration: kafka.security.sasl_password: protocol {} needs a password \
             (set ADCLICK_KAFKA__SECURITY__SASL_PASSWORD)",
            s.protocol
        );
    }
    for (key, path) in s.files() {
        std::fs::File::open(path)
            .with_context(|| format!("invalid configuration: {key}: cannot read {path}"))?;
    }
    Ok(())
}

/// The text of a config file on the defaults, as [`load`] reads a file but
/// without the environment: the same parser and checks, for tests and the
/// fuzzer.
pub fn from_file_text(text: &str) -> Result<Config> {
    checked(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
}

fn checked(fig: Figment) -> Result<Config> {
    let cfg: Config = fig
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    cfg.validate().context("invalid configuration")?;
    Ok(cfg)
}

/// Parses a configuration that the coordinator shipped as TOML.
pub fn from_toml(text: &str) -> Result<Config> {
    let cfg: Config = toml::from_str(text).context("configuration from coordinator")?;
    cfg.validate()?;
    Ok(cfg)
}

/// Renders a configuration as TOML for shipping to nodes.
pub fn to_toml(cfg: &Config) -> Result<String> {
    toml::to_string(cfg).context("serialising configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_overrides_and_named_errors() {
        let dir = std::env::temp_dir().join(format!("adclick-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("adclick.toml");
        std::fs::write(
            &file,
            "[job]\nwindow_secs = 30\n[aggregate]\nreplicas = 2\n",
        )
        .unwrap();
        let cfg = load(Some(&file)).unwrap();
        assert_eq!(cfg.job.window_secs, 30);
        assert_eq!(cfg.aggregate.replicas, 2);
        let back = from_toml(&to_toml(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);

        std::fs::write(&file, "[job]\nwindow_sec = 30\n").unwrap();
        let e = format!("{:#}", load(Some(&file)).unwrap_err());
        assert!(e.contains("window_sec"), "{e}");
        std::fs::write(&file, "[job]\nwindow_secs = 0\n").unwrap();
        let e = format!("{:#}", load(Some(&file)).unwrap_err());
        assert!(e.contains("job.window_secs"), "{e}");
        assert!(load(Some(&dir.join("missing.toml"))).is_err());
    }
}
