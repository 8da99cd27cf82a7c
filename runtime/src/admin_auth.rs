//! Bearer-token authentication of the coordinator's admin API. The admin
//! API can stop, replay and rescale the job, so when a token is configured
//! every call must carry it; nodes talk to the coordinator through another
//! service and need none.
//!
//! The token comes from `ADCLICK_ADMIN_TOKEN` or, when that is unset, from
//! the file named by `admin.token_file` (or `--token-file` for clients).
//! Without either, the admin API is open, as before tokens existed.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// The environment variable that holds the token itself.
pub const TOKEN_ENV: &str = "ADCLICK_ADMIN_TOKEN";

/// How a refused caller passes the token; part of every refusal.
const HOW: &str = "pass it with `adclickctl --token-file FILE` or the ADCLICK_ADMIN_TOKEN \
                   environment variable (gRPC clients: metadata `authorization: Bearer <token>`)";

/// The token from `ADCLICK_ADMIN_TOKEN`, else from `file` (empty = none):
/// the server's rule, where the environment overrides the configuration.
pub fn load_token(file: Option<&Path>) -> Result<Option<String>> {
    match env_token() {
        Some(t) => Ok(Some(t)),
        None => read_token_file(file),
    }
}

/// The token a client sends: an explicit `--token-file` first, then
/// `ADCLICK_ADMIN_TOKEN`.
pub fn client_token(file: Option<&Path>) -> Result<Option<String>> {
    match read_token_file(file)? {
        Some(t) => Ok(Some(t)),
        None => Ok(env_token()),
    }
}

fn env_token() -> Option<String> {
    let t = std::env::var(TOKEN_ENV).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// Reads a token file; `None` or an empty path means no file.
pub fn read_token_file(file: Option<&Path>) -> Result<Option<String>> {
    let Some(file) = file.filter(|f| !f.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the admin token file {}", file.display()))?;
    let t = text.trim();
    if t.is_empty() {
        bail!("the admin token file {} is empty", file.display());
    }
    if MetadataValue::<Ascii>::try_from(format!("Bearer {t}")).is_err() {
        bail!(
            "the admin token in {} holds characters a gRPC header cannot carry",
            file.display()
        );
    }
    Ok(Some(t.to_owned()))
}

/// Server side: refuses calls without the expected token.
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<Arc<[u8]>>,
}

impl RequireToken {
    /// `None` lets every call through.
    pub fn new(token: Option<String>) -> Self {
        Self {
            expected: token.map(|t| Arc::from(format!("Bearer {t}").into_bytes())),
        }
    }

    /// Whether a token is required.
    pub fn enabled(&self) -> bool {
        self.expected.is_some()
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let Some(given) = req.metadata().get("authorization") else {
            metrics::counter!("admin_auth_failures_total", "reason" => "missing").increment(1);
            return Err(Status::unauthenticated(format!(
                "the admin API needs a bearer token: {HOW}"
            )));
        };
        // Constant time: the comparison must not tell how much was right.
        if bool::from(given.as_bytes().ct_eq(expected)) {
            Ok(req)
        } else {
            metrics::counter!("admin_auth_failures_total", "reason" => "wrong").increment(1);
            Err(Status::unauthenticated(format!("wrong admin token: {HOW}")))
        }
    }
}

/// Client side: adds the token to every call.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// A client interceptor for `token` (`None` sends nothing).
    pub fn new(token: Option<&str>) -> Result<Self> {
        token
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}"))
                    .context("the admin token holds characters a gRPC header cannot carry")
            })
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(i: &mut RequireToken, header: Option<&str>) -> Result<(), Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().expect("ascii"));
        }
        i.call(req).map(|_| ())
    }

    #[test]
    fn only_the_configured_token_passes() {
        let mut open = RequireToken::new(None);
        assert!(call(&mut open, None).is_ok());
        let mut i = RequireToken::new(Some("s3cret".into()));
        let missing = call(&mut i, None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(
            missing.message().contains("--token-file"),
            "{}",
            missing.message()
        );
        let wrong = call(&mut i, Some("Bearer s3cre")).unwrap_err();
        assert!(wrong.message().starts_with("wrong admin token"));
        assert!(call(&mut i, Some("Bearer s3cret!")).is_err());
        assert!(call(&mut i, Some("s3cret")).is_err());
        assert!(call(&mut i, Some("Bearer s3cret")).is_ok());
        let mut client = BearerToken::new(Some("s3cret")).expect("token");
        let req = client.call(Request::new(())).expect("client");
        assert!(i.call(req).is_ok());
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("adclick-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("t");
        std::fs::write(&f, "abc\n").expect("write");
        assert_eq!(read_token_file(Some(&f)).expect("load"), Some("abc".into()));
        assert_eq!(client_token(Some(&f)).expect("load"), Some("abc".into()));
        std::fs::write(&f, "  \n").expect("write");
        let empty = read_token_file(Some(&f)).unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
        assert!(read_token_file(Some(&dir.join("missing"))).is_err());
        assert_eq!(read_token_file(None).expect("none"), None);
        assert_eq!(read_token_file(Some(Path::new(""))).expect("none"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
