//! Optional API keys: when `ENGRAM_API_KEYS` names a file, every `/v1` route needs
//! `Authorization: Bearer <key>`.
//!
//! The file holds one key per line, or `sha256:<hex>` of a key so the keys themselves need not sit
//! on the server. Only hashes are kept in memory and compared; keys are never logged.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

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

/// Middleware: lets a request through only with an accepted bearer key (when keys are configured).
pub async fn require(State(keys): State<Option<Arc<ApiKeys>>>, request: Request, next: Next) -> Response {
    let Some(keys) = keys else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if keys.accepts(key) => next.run(request).await,
        _ => ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "a valid API key is required: send `Authorization: Bearer <key>`".into(),
            kind: "invalid_request_error",
            param: None,
            retry_after: None,
        }
        .into_response(),
    }
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
}
