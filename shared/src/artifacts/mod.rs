//! The artifact store: immutable files addressed by their sha256.
//!
//! Published datasets, fine-tuned models and reports go here; the registry records their hashes.
//! Because the key is the content's hash, a put is idempotent, a get is verified, and two runs that
//! produce the same bytes store them once. Built on the `object_store` crate: a local directory is
//! the embedded default, any S3-compatible store the production backend.

pub mod tree;

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::hashing::{is_sha256_hex, sha256_hex};
use crate::{Error, Result};

const PART: usize = 8 * 1024 * 1024;

/// Content-addressed files in a local directory or an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    backend: &'static str,
}

fn key(hash: &str) -> Result<Path> {
    if !is_sha256_hex(hash) {
        return Err(Error::Invalid(format!(
            "{hash:?} is not a sha256 (64 lowercase hex digits)"
        )));
    }
    Ok(Path::from(format!("sha256/{}/{hash}", &hash[..2])))
}

impl ArtifactStore {
    /// Artifacts in a local directory (created if needed).
    pub fn local(dir: &FsPath) -> Result<Self> {
        let fail = |reason: String| Error::Config {
            variable: "ENGRAM_HOME",
            address: dir.display().to_string(),
            reason,
            hint: "Point ENGRAM_HOME at a writable directory, or set ENGRAM_ARTIFACTS_URL to an s3:// bucket.".into(),
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the artifact directory: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| fail(e.to_string()))?;
        Ok(ArtifactStore {
            store: Arc::new(store),
            backend: "local",
        })
    }

    /// Artifacts in an S3-compatible bucket, `s3://bucket[/prefix]`. Endpoint, region and
    /// credentials come from the standard `AWS_*` variables (`AWS_ENDPOINT_URL` for non-AWS stores).
    /// Checks the bucket answers before returning.
    pub async fn s3(url: &str) -> Result<Self> {
        let fail = |reason: String| {
            Error::Config {
            variable: "ENGRAM_ARTIFACTS_URL",
            address: format!("{url}{}", endpoint_note()),
            reason,
            hint: "Check the bucket exists, the endpoint (AWS_ENDPOINT_URL) answers and the AWS_* credentials are set, or unset ENGRAM_ARTIFACTS_URL to keep artifacts under ENGRAM_HOME.".into(),
        }
        };
        let parsed = url::Url::parse(url).map_err(|e| fail(format!("not a URL: {e}")))?;
        if parsed.scheme() != "s3" {
            return Err(fail("only s3:// URLs are supported".into()));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_url(url)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(60))
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_allow_http(true),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            });
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| fail(e.to_string()))?;
        // A prefix under the URL's path keeps engram's objects apart from anything else in the bucket.
        let prefix = parsed.path().trim_matches('/').to_string();
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        let probe = Path::from("sha256/probe");
        match store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(fail(format!("the bucket does not answer: {e}"))),
        }
        Ok(ArtifactStore { store, backend: "s3" })
    }

    /// `local` or `s3`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    fn err(&self, err: object_store::Error) -> Error {
        Error::backend(if self.backend == "s3" { "s3" } else { "local artifacts" }, err)
    }

    /// Stores `bytes` and returns their sha256. Storing the same bytes again writes nothing.
    pub async fn put(&self, bytes: impl Into<Bytes>) -> Result<String> {
        let bytes = bytes.into();
        let hash = sha256_hex(&bytes);
        let location = key(&hash)?;
        if !self.exists(&hash).await? {
            self.store
                .put(&location, PutPayload::from(bytes))
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(hash)
    }

    /// Stores a file, streaming it (multipart for large files), and returns its sha256.
    pub async fn put_file(&self, path: &FsPath) -> Result<String> {
        let hash = hash_file(path).await?;
        if self.exists(&hash).await? {
            return Ok(hash);
        }
        let mut file = tokio::fs::File::open(path).await.map_err(|e| file_error(path, e))?;
        let upload = self.store.put_multipart(&key(&hash)?).await.map_err(|e| self.err(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            let n = file.read(&mut buffer).await.map_err(|e| file_error(path, e))?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(|e| self.err(e))?;
            writer.write(&buffer[..n]);
        }
        writer.finish().await.map_err(|e| self.err(e))?;
        Ok(hash)
    }

    /// True when an artifact with this hash is stored.
    pub async fn exists(&self, hash: &str) -> Result<bool> {
        match self.store.head(&key(hash)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The bytes of an artifact, verified against its hash.
    pub async fn get(&self, hash: &str) -> Result<Bytes> {
        let result = self
            .store
            .get(&key(hash)?)
            .await
            .map_err(|e| self.not_found_or(hash, e))?;
        let bytes = result.bytes().await.map_err(|e| self.err(e))?;
        let actual = sha256_hex(&bytes);
        if actual != hash {
            return Err(Error::Corrupt(format!(
                "artifact {hash} holds bytes whose sha256 is {actual}"
            )));
        }
        Ok(bytes)
    }

    /// Streams an artifact into `target`, verified; `target` appears only once complete and correct.
    pub async fn get_to_file(&self, hash: &str, target: &FsPath) -> Result<()> {
        let result = self
            .store
            .get(&key(hash)?)
            .await
            .map_err(|e| self.not_found_or(hash, e))?;
        let partial = target.with_extension(format!("partial-{}", std::process::id()));
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| file_error(&partial, e))?;
        let mut hasher = Sha256::new();
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(e))?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| file_error(&partial, e))?;
        }
        file.sync_all().await.map_err(|e| file_error(&partial, e))?;
        let actual = hex::encode(hasher.finalize());
        if actual != hash {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(Error::Corrupt(format!(
                "artifact {hash} holds bytes whose sha256 is {actual}"
            )));
        }
        tokio::fs::rename(&partial, target)
            .await
            .map_err(|e| file_error(target, e))
    }

    fn not_found_or(&self, hash: &str, err: object_store::Error) -> Error {
        match err {
            object_store::Error::NotFound { .. } => Error::not_found(format!("artifact {hash}")),
            other => self.err(other),
        }
    }
}

fn endpoint_note() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .map(|e| format!(" (endpoint {e})"))
        .unwrap_or_default()
}

fn file_error(path: &FsPath, err: std::io::Error) -> Error {
    Error::Invalid(format!("{}: {err}", path.display()))
}

/// The sha256 of a file, read in blocks.
pub async fn hash_file(path: &FsPath) -> Result<String> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| file_error(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buffer).await.map_err(|e| file_error(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
