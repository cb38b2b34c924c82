//! API keys: when `ENGRAM_API_KEYS` names a file, every `/v1` route needs
//! `Authorization: Bearer <key>` (the scheme in any case, as RFC 9110 says).
//!
//! The file holds one key per line, or `sha256:<hex>` of a key so the keys themselves need not sit
//! on the server. Only hashes are kept in memory and compared; keys are never logged. The file is
//! read again on SIGHUP and whenever it changes (a Kubernetes Secret volume or a compose secret is
//! updated in place), so keys are added and revoked without a restart; a file that no longer parses
//! keeps the keys in force and says why. Failed authentications are counted
//! (`engram_auth_failures_total{reason}`) and logged, without what was presented.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::metrics::Metrics;

/// The accepted keys, as sha256 hashes.
#[derive(Debug, Default)]
pub struct ApiKeys {
    hashes: HashSet<String>,
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl ApiKeys {
    /// Reads the key file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("ENGRAM_API_KEYS={}: cannot read the key file", path.display()))?;
        let mut hashes = HashSet::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.strip_prefix("sha256:") {
                Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    hashes.insert(hex.to_ascii_lowercase());
                }
                Some(_) => anyhow::bail!(
                    "ENGRAM_API_KEYS={}: line {} is not `sha256:` followed by 64 hex digits",
                    path.display(),
                    number + 1
                ),
                None => {
                    hashes.insert(hash(line));
                }
            }
        }
        if hashes.is_empty() {
            anyhow::bail!("ENGRAM_API_KEYS={}: the file holds no key", path.display());
        }
        Ok(Self { hashes })
    }

    /// Whether `key` is accepted.
    pub fn accepts(&self, key: &str) -> bool {
        self.hashes.contains(&hash(key))
    }
}

/// The key file and the keys it held when last read.
#[derive(Debug)]
pub struct KeyRing {
    path: PathBuf,
    keys: RwLock<Arc<ApiKeys>>,
    /// What the file looked like when read: a change means read it again.
    stamp: RwLock<Option<Stamp>>,
}

/// A file's identity and state, cheap to read.
#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

impl KeyRing {
    /// Reads the key file; a start-up failure if it is missing, empty or malformed.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let stamp = stamp(path);
        Ok(Self {
            keys: RwLock::new(Arc::new(ApiKeys::load(path)?)),
            path: path.to_path_buf(),
            stamp: RwLock::new(stamp),
        })
    }

    /// The keys in force.
    pub fn current(&self) -> Arc<ApiKeys> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the file again; on an error the keys in force stay.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let stamp = stamp(&self.path);
        let keys = ApiKeys::load(&self.path)?;
        let count = keys.hashes.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = stamp;
        Ok(count)
    }

    fn changed(&self) -> bool {
        let now = stamp(&self.path);
        now.is_some() && *self.stamp.read().unwrap_or_else(|p| p.into_inner()) != now
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(count) => tracing::info!(keys = count, file = %self.path.display(), "API keys reloaded ({why})"),
            Err(err) => tracing::error!("API keys not reloaded ({why}), the previous keys stay in force: {err:#}"),
        }
    }
}

/// Reloads `ring` on SIGHUP and when its file changes (checked every `interval`), forever.
pub async fn watch(ring: Arc<KeyRing>, interval: Duration) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = signalled => ring.reload_logged("SIGHUP"),
            _ = tick.tick() => {
                if ring.changed() {
                    ring.reload_logged("the file changed");
                }
            }
        }
    }
}

/// What the key check needs: the keys (none: open) and where failures are counted.
#[derive(Clone)]
pub struct Guard {
    /// The key ring, when keys are configured.
    pub keys: Option<Arc<KeyRing>>,
    /// The service's metrics.
    pub metrics: Arc<Metrics>,
}

/// The key of an `Authorization: Bearer <key>` header; the scheme matches in any case.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Middleware: lets a request through only with an accepted bearer key (when keys are configured).
pub async fn require(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let Some(ring) = &guard.keys else {
        return next.run(request).await;
    };
    let header = request.headers().get(header::AUTHORIZATION);
    let reason = match header.map(|v| v.to_str().ok().and_then(bearer)) {
        None => "missing",
        Some(None) => "malformed",
        Some(Some(key)) if ring.current().accepts(key) => return next.run(request).await,
        Some(Some(_)) => "unknown_key",
    };
    guard.metrics.auth_failures.with_label_values(&[reason]).inc();
    tracing::warn!(reason, method = %request.method(), path = %request.uri().path(), "authentication failed");
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "a valid API key is required: send `Authorization: Bearer <key>`".into(),
        kind: "invalid_request_error",
        param: None,
        retry_after: None,
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hashes_are_accepted_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("engram-keys-{}", std::process::id()));
        std::fs::write(&dir, format!("# keys\nalpha\nsha256:{}\n", hash("beta"))).unwrap();
        let keys = ApiKeys::load(&dir).unwrap();
        assert!(keys.accepts("alpha") && keys.accepts("beta"));
        assert!(!keys.accepts("gamma") && !keys.accepts(""));
        std::fs::write(&dir, "sha256:nothex\n").unwrap();
        assert!(ApiKeys::load(&dir).unwrap_err().to_string().contains("line 1"));
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn the_bearer_scheme_matches_in_any_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc "), Some("abc"));
        assert_eq!(bearer("BEARER  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn a_changed_file_is_noticed_and_a_broken_one_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "alpha\n").unwrap();
        let ring = KeyRing::open(&path).unwrap();
        assert!(!ring.changed());
        std::fs::write(&path, "beta\ngamma\n").unwrap();
        assert!(ring.changed(), "a longer file is a change");
        assert_eq!(ring.reload().unwrap(), 2);
        assert!(ring.current().accepts("beta") && !ring.current().accepts("alpha"));
        std::fs::write(&path, "sha256:broken\n").unwrap();
        assert!(ring.reload().is_err());
        assert!(ring.current().accepts("beta"), "the keys in force stay");
    }
}
