//! The artifact-store contract: a local directory and an S3-compatible server pass the same suite.

mod common;

use engram_shared::Error;
use engram_shared::artifacts::{ArtifactStore, hash_file};
use engram_shared::hashing::sha256_hex;

async fn artifact_contract(store: &ArtifactStore) {
    println!("artifact contract: running against {}", store.backend());
    let bytes = format!("dataset split {}\n", uuid::Uuid::new_v4()).into_bytes();
    let hash = sha256_hex(&bytes);
    assert!(!store.exists(&hash).await.unwrap());
    assert_eq!(store.put(bytes.clone()).await.unwrap(), hash);
    assert!(store.exists(&hash).await.unwrap());
    assert_eq!(store.put(bytes.clone()).await.unwrap(), hash, "same bytes, same key");
    assert_eq!(store.get(&hash).await.unwrap().as_ref(), bytes.as_slice());

    // A file bigger than one multipart part streams in and out intact.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("model.bin");
    let content: Vec<u8> = (0..(9 * 1024 * 1024 + 17)).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&big, &content).unwrap();
    let big_hash = store.put_file(&big).await.unwrap();
    assert_eq!(big_hash, hash_file(&big).await.unwrap());
    let copy = dir.path().join("copy.bin");
    store.get_to_file(&big_hash, &copy).await.unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), content);

    let missing = sha256_hex(b"never stored");
    assert!(matches!(store.get(&missing).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        store.get_to_file(&missing, &dir.path().join("x")).await,
        Err(Error::NotFound { .. })
    ));
    assert!(!dir.path().join("x").exists(), "a failed download leaves no file");
    assert!(matches!(store.get("../../etc/passwd").await, Err(Error::Invalid(_))));
    common::report(&format!("PASSED: artifact contract on {}", store.backend()));
}

#[tokio::test]
async fn local_directory_passes_the_artifact_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::local(dir.path()).unwrap();
    artifact_contract(&store).await;
}

#[tokio::test]
async fn local_artifacts_detect_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::local(dir.path()).unwrap();
    let hash = store.put(b"original".to_vec()).await.unwrap();
    let file = dir.path().join("sha256").join(&hash[..2]).join(&hash);
    std::fs::write(&file, b"tampered").unwrap();
    assert!(matches!(store.get(&hash).await, Err(Error::Corrupt(_))));
    let target = dir.path().join("out");
    assert!(matches!(
        store.get_to_file(&hash, &target).await,
        Err(Error::Corrupt(_))
    ));
    assert!(!target.exists(), "corrupt bytes never reach the target path");
}

#[tokio::test]
async fn s3_passes_the_artifact_contract() {
    let Some(url) = common::backend_url("s3", "ENGRAM_TEST_S3_URL") else {
        return;
    };
    // A fresh prefix per run keeps runs apart in a shared bucket.
    let url = format!("{}/{}", url.trim_end_matches('/'), common::unique_name("run"));
    let store = ArtifactStore::s3(&url).await.unwrap();
    artifact_contract(&store).await;
}
