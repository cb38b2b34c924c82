//! `dataset --push-hub REPO`: uploads a dataset version to the Hugging Face Hub through its HTTP
//! API — create the dataset repo (private; an existing one is kept), then one commit carrying every
//! file inline (`POST /api/datasets/{repo}/commit/main`, NDJSON: a header line, then one line per
//! file, base64). Inline files are limited by the Hub to 10 MB each; larger ones would need the
//! Hub's LFS upload, which this client does not do yet (it refuses them and says so).

use base64::Engine;
use engram_shared::artifacts::ArtifactStore;
use engram_shared::registry::DatasetVersion;
use serde_json::json;

use crate::steps::publish;

/// Largest file sent inline.
const INLINE_LIMIT: u64 = 10 * 1024 * 1024;

/// Pushes `version`; returns the repo's address.
pub async fn push(
    endpoint: &str,
    token: &str,
    repo: &str,
    artifacts: &ArtifactStore,
    version: &DatasetVersion,
) -> anyhow::Result<String> {
    let (organization, name) = match repo.split_once('/') {
        Some((org, name)) if !org.is_empty() && !name.is_empty() && !name.contains('/') => (Some(org), name),
        None if !repo.is_empty() => (None, repo),
        _ => anyhow::bail!("--push-hub {repo:?}: give the repo as `user/name` or `org/name`"),
    };
    let endpoint = endpoint.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()?;
    let manifest = publish::manifest(artifacts, &version.spec.artifact_hash).await?;
    if let Some((path, entry)) = manifest.files.iter().find(|(_, e)| e.bytes > INLINE_LIMIT) {
        anyhow::bail!(
            "{path} is {} bytes; the Hub takes at most {INLINE_LIMIT} bytes inline and this client has no LFS upload: \
             export the version (`feature-pipeline datasets export`) and upload it with the Hub's own tools",
            entry.bytes
        );
    }

    let created = client
        .post(format!("{endpoint}/api/repos/create"))
        .bearer_auth(token)
        .json(&json!({ "type": "dataset", "name": name, "organization": organization, "private": true }))
        .send()
        .await?;
    let status = created.status();
    if !(status.is_success() || status.as_u16() == 409) {
        let body = created.text().await.unwrap_or_default();
        anyhow::bail!(
            "the Hub refused to create dataset repo {repo} ({status}): {body}. Check ENGRAM_HF_TOKEN has write access"
        );
    }

    let mut body = String::new();
    let header = json!({ "key": "header", "value": {
        "summary": format!("engram dataset v{}", version.version),
        "description": format!("artifact {}, run {}", version.spec.artifact_hash, version.spec.run_id.as_deref().unwrap_or("-")),
    }});
    body.push_str(&header.to_string());
    body.push('\n');
    for (path, entry) in &manifest.files {
        let bytes = artifacts.get(&entry.sha256).await?;
        let line = json!({ "key": "file", "value": {
            "path": path,
            "encoding": "base64",
            "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }});
        body.push_str(&line.to_string());
        body.push('\n');
    }
    let committed = client
        .post(format!("{endpoint}/api/datasets/{repo}/commit/main"))
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    let status = committed.status();
    if !status.is_success() {
        let body = committed.text().await.unwrap_or_default();
        anyhow::bail!("the Hub refused the commit to {repo} ({status}): {body}");
    }
    Ok(format!("{endpoint}/datasets/{repo}"))
}
