//! The registry contract: the same migrations and queries on SQLite and PostgreSQL.

mod common;

use engram_shared::Error;
use engram_shared::registry::{
    AliasKind, INDEX_LIVE, IndexStatus, MODEL_PRODUCTION, NewDatasetVersion, NewIndexVersion, NewModelVersion,
    Registry, RunOwner, RunStatus, StepKey,
};
use serde_json::json;
use sqlx::Connection;

fn step(name: &str, input: &str) -> StepKey {
    StepKey {
        name: name.into(),
        code_version: "0.1.0".into(),
        config_hash: "c".repeat(64),
        input_hash: input.into(),
    }
}

fn model(name: &str) -> NewModelVersion {
    NewModelVersion {
        run_id: None,
        name: name.into(),
        format: "gguf".into(),
        artifact_hash: "a".repeat(64),
        dataset_version: None,
        lineage: json!({ "base": "SmolLM2-135M-Instruct", "note": "base, not fine-tuned" }),
    }
}

async fn runs_and_steps_are_recorded_and_cached_by_key(registry: &Registry) {
    let config = json!({ "steps": ["extract", "index"] });
    let run = registry.start_run(&config, "0.1.0").await.unwrap();
    assert_eq!(run.status, RunStatus::Running);
    let key = step("extract", "input-1");
    assert!(registry.cached_step(&key).await.unwrap().is_none());

    registry.start_step(&run.id, &key).await.unwrap();
    assert!(
        registry.cached_step(&key).await.unwrap().is_none(),
        "a running step is no cache entry"
    );
    registry
        .finish_step(
            &run.id,
            "extract",
            RunStatus::Succeeded,
            Some("out-1"),
            &json!({ "documents": 3 }),
            None,
        )
        .await
        .unwrap();
    let cached = registry.cached_step(&key).await.unwrap().expect("cache hit");
    assert_eq!(cached.run_id, run.id);
    assert_eq!(cached.output_hash.as_deref(), Some("out-1"));
    assert_eq!(cached.detail, json!({ "documents": 3 }));
    assert!(
        registry
            .cached_step(&step("extract", "input-2"))
            .await
            .unwrap()
            .is_none(),
        "other input, no hit"
    );

    registry.start_step(&run.id, &step("index", "input-1")).await.unwrap();
    registry
        .finish_step(&run.id, "index", RunStatus::Failed, None, &json!({}), Some("boom"))
        .await
        .unwrap();
    assert!(
        registry.cached_step(&step("index", "input-1")).await.unwrap().is_none(),
        "failures are not cached"
    );
    registry
        .finish_run(&run.id, RunStatus::Failed, Some("index failed: boom"))
        .await
        .unwrap();

    let stored = registry.run(&run.id).await.unwrap().expect("run stored");
    assert_eq!(stored.status, RunStatus::Failed);
    assert_eq!(stored.config, config);
    assert_eq!(stored.error.as_deref(), Some("index failed: boom"));
    assert!(stored.finished_at.is_some());
    let steps = registry.steps(&run.id).await.unwrap();
    assert_eq!(
        steps.iter().map(|s| s.key.name.as_str()).collect::<Vec<_>>(),
        ["extract", "index"]
    );
    assert_eq!(registry.runs(10).await.unwrap()[0].id, run.id);
    assert!(matches!(
        registry.finish_run("no-such-run", RunStatus::Succeeded, None).await,
        Err(Error::NotFound { .. })
    ));

    // A later stage finds the latest success of a step by name, whatever its key.
    let run = registry.start_run(&json!({}), "0.1.0").await.unwrap();
    let unique = format!("extract-{}", run.id);
    assert!(registry.latest_step(&unique).await.unwrap().is_none());
    for (input, status) in [
        ("a", RunStatus::Succeeded),
        ("b", RunStatus::Succeeded),
        ("c", RunStatus::Failed),
    ] {
        registry.start_step(&run.id, &step(&unique, input)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        registry
            .finish_step(&run.id, &unique, status, Some(input), &json!({}), None)
            .await
            .unwrap();
        if status == RunStatus::Failed {
            assert!(
                registry.latest_step(&unique).await.unwrap().is_none(),
                "a failed retry replaces the record"
            );
        } else {
            let latest = registry.latest_step(&unique).await.unwrap().expect("latest success");
            assert_eq!(latest.output_hash.as_deref(), Some(input));
        }
    }
}

async fn versions_are_numbered_and_keep_their_lineage(registry: &Registry) {
    let dataset = NewDatasetVersion {
        run_id: None,
        artifact_hash: "d".repeat(64),
        document_set_hash: "e".repeat(64),
        lineage: json!({ "teacher": "local", "prompt_version": 1 }),
        stats: json!({ "train": 10, "validation": 2, "test": 2 }),
    };
    let first = registry.register_dataset(dataset.clone()).await.unwrap();
    let second = registry.register_dataset(dataset.clone()).await.unwrap();
    assert_eq!((first.version, second.version), (1, 2));
    assert_eq!(registry.dataset(1).await.unwrap().unwrap().spec, dataset);
    assert_eq!(registry.datasets().await.unwrap().len(), 2);

    let base = registry.register_model(model("SmolLM2-135M-Instruct")).await.unwrap();
    assert_eq!(base.version, 1);
    assert_eq!(
        registry.model(1).await.unwrap().unwrap().spec,
        model("SmolLM2-135M-Instruct")
    );
    registry.set_alias(AliasKind::Model, MODEL_PRODUCTION, 1).await.unwrap();
    assert_eq!(
        registry.alias(AliasKind::Model, MODEL_PRODUCTION).await.unwrap(),
        Some(1)
    );
    assert!(matches!(
        registry.set_alias(AliasKind::Model, MODEL_PRODUCTION, 99).await,
        Err(Error::NotFound { .. })
    ));
}

async fn an_index_version_goes_live_only_when_ready(registry: &Registry) {
    let spec = NewIndexVersion {
        run_id: None,
        embedding_model: "all-MiniLM-L6-v2".into(),
        dimension: 384,
        distance: "cosine".into(),
        manifest: json!({ "chunker": { "tokens": 256, "overlap": 32 } }),
    };
    let building = registry.begin_index_version(spec.clone()).await.unwrap();
    assert_eq!(building.status, IndexStatus::Building);
    assert_eq!(building.collection, format!("chunks_v{}", building.version));
    let refused = registry.set_alias(AliasKind::Index, INDEX_LIVE, building.version).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "got {refused:?}");

    let manifest = json!({ "chunker": { "tokens": 256, "overlap": 32 }, "points": 120 });
    registry
        .finish_index_version(building.version, &manifest)
        .await
        .unwrap();
    registry
        .set_alias(AliasKind::Index, INDEX_LIVE, building.version)
        .await
        .unwrap();
    let ready = registry.index_version(building.version).await.unwrap().unwrap();
    assert_eq!(ready.status, IndexStatus::Ready);
    assert_eq!(ready.spec.manifest, manifest);
    assert_eq!(
        registry.aliases(AliasKind::Index).await.unwrap(),
        vec![(INDEX_LIVE.to_string(), building.version)]
    );

    registry.mark_index_dropped(building.version).await.unwrap();
    assert_eq!(
        registry.index_version(building.version).await.unwrap().unwrap().status,
        IndexStatus::Dropped
    );
}

async fn concurrent_registrations_get_distinct_versions(registry: &Registry) {
    let before = registry.models().await.unwrap().len();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.register_model(model(&format!("m{i}"))).await.unwrap().version })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 12, "every registration got its own version");
    assert_eq!(registry.models().await.unwrap().len(), before + 12);
}

async fn teacher_responses_are_stored_once_by_key(registry: &Registry) {
    let key = common::unique_name("prompt");
    assert_eq!(registry.teacher_response(&key).await.unwrap(), None);
    assert!(
        registry
            .store_teacher_response(&key, "teacher-a", "first")
            .await
            .unwrap()
    );
    // A second answer under the same key (a concurrent worker, a rerun) does not replace the first.
    assert!(
        !registry
            .store_teacher_response(&key, "teacher-a", "second")
            .await
            .unwrap()
    );
    assert_eq!(registry.teacher_response(&key).await.unwrap().as_deref(), Some("first"));
    let text = "unicode ✓ and a long answer ".repeat(500);
    let other = common::unique_name("prompt");
    registry
        .store_teacher_response(&other, "teacher-a", &text)
        .await
        .unwrap();
    assert_eq!(registry.teacher_response(&other).await.unwrap(), Some(text));
    assert!(registry.teacher_responses("teacher-a").await.unwrap() >= 2);
}

async fn metrics_alias_history_and_training_checkpoints(registry: &Registry) {
    let first = registry.register_model(model("base")).await.unwrap();
    assert_eq!(first.metrics, json!({}));
    let tuned = registry.register_model(model("tuned")).await.unwrap();
    registry
        .add_model_metrics(tuned.version, &json!({ "test_rouge_l": 0.31, "validation_loss": 1.5 }))
        .await
        .unwrap();
    registry
        .add_model_metrics(
            tuned.version,
            &json!({ "test_rouge_l": 0.33, "base_test_rouge_l": 0.29 }),
        )
        .await
        .unwrap();
    let stored = registry.model(tuned.version).await.unwrap().unwrap();
    assert_eq!(
        stored.metrics,
        json!({ "test_rouge_l": 0.33, "validation_loss": 1.5, "base_test_rouge_l": 0.29 }),
        "later metrics replace their keys and keep the others"
    );
    assert!(registry.add_model_metrics(999_999, &json!({})).await.is_err());

    // Every move of an alias is remembered, in order, even within one millisecond.
    let before = registry.alias_history(AliasKind::Model, "staging").await.unwrap();
    for version in [first.version, tuned.version, first.version] {
        registry.set_alias(AliasKind::Model, "staging", version).await.unwrap();
    }
    let after = registry.alias_history(AliasKind::Model, "staging").await.unwrap();
    assert_eq!(after[before.len()..], [first.version, tuned.version, first.version]);

    // A training's checkpoint pointer only moves forward, and is cleared when the model is in.
    let key = "k".repeat(64);
    assert_eq!(registry.train_checkpoint(&key).await.unwrap(), None);
    registry.save_train_checkpoint(&key, 4, "hash-4").await.unwrap();
    registry.save_train_checkpoint(&key, 8, "hash-8").await.unwrap();
    registry.save_train_checkpoint(&key, 6, "hash-6").await.unwrap();
    assert_eq!(
        registry.train_checkpoint(&key).await.unwrap(),
        Some((8, "hash-8".to_string()))
    );
    registry.clear_train_checkpoint(&key).await.unwrap();
    assert_eq!(registry.train_checkpoint(&key).await.unwrap(), None);
}

async fn a_dead_run_is_marked_interrupted_with_the_steps_it_finished(registry: &Registry) {
    let owner = RunOwner {
        host: "worker-7".into(),
        pid: 4242,
    };
    let run = registry
        .start_owned_run(&json!({ "command": "run" }), "0.1.0", Some(&owner))
        .await
        .unwrap();
    registry.heartbeat(&run.id).await.unwrap();
    let open = registry.open_runs().await.unwrap();
    let mine = open.iter().find(|r| r.id == run.id).expect("listed as open");
    assert_eq!(mine.owner.as_ref(), Some(&owner));
    for name in ["extract", "distil"] {
        registry.start_step(&run.id, &step(name, "i")).await.unwrap();
    }
    registry
        .finish_step(&run.id, "extract", RunStatus::Succeeded, Some("h"), &json!({}), None)
        .await
        .unwrap();

    // A judge that finds nothing dead marks nothing.
    assert!(registry.interrupt_dead_runs(|_| false).await.unwrap().is_empty());
    let marked = registry.interrupt_dead_runs(|r| r.id == run.id).await.unwrap();
    assert_eq!(marked, vec![run.id.clone()]);
    let stored = registry.run(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Interrupted);
    let error = stored.error.unwrap_or_default();
    assert!(
        error.contains("finished steps: extract") && error.contains("unfinished: distil"),
        "{error}"
    );
    let steps = registry.steps(&run.id).await.unwrap();
    let status = |name: &str| steps.iter().find(|s| s.key.name == name).map(|s| s.status);
    assert_eq!(
        status("extract"),
        Some(RunStatus::Succeeded),
        "finished work stays cached"
    );
    assert_eq!(status("distil"), Some(RunStatus::Interrupted));
    assert!(registry.open_runs().await.unwrap().iter().all(|r| r.id != run.id));
    assert!(
        registry
            .interrupt_dead_runs(|r| r.id == run.id)
            .await
            .unwrap()
            .is_empty(),
        "a run is marked once"
    );
}

async fn registry_contract(registry: &Registry) {
    println!("registry contract: running against {}", registry.backend());
    runs_and_steps_are_recorded_and_cached_by_key(registry).await;
    versions_are_numbered_and_keep_their_lineage(registry).await;
    an_index_version_goes_live_only_when_ready(registry).await;
    concurrent_registrations_get_distinct_versions(registry).await;
    teacher_responses_are_stored_once_by_key(registry).await;
    metrics_alias_history_and_training_checkpoints(registry).await;
    a_dead_run_is_marked_interrupted_with_the_steps_it_finished(registry).await;
    common::report(&format!("PASSED: registry contract on {}", registry.backend()));
}

#[tokio::test]
async fn sqlite_passes_the_registry_contract() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open_sqlite(&dir.path().join("registry.sqlite"))
        .await
        .unwrap();
    registry_contract(&registry).await;
    // Reopening runs the migrations again: a no-op.
    let reopened = Registry::open_sqlite(&dir.path().join("registry.sqlite"))
        .await
        .unwrap();
    assert_eq!(reopened.datasets().await.unwrap().len(), 2);
}

#[tokio::test]
async fn postgres_passes_the_registry_contract() {
    let Some(admin_url) = common::backend_url("postgres", "ENGRAM_TEST_DATABASE_URL") else {
        return;
    };
    // A fresh database per run, so the suite starts empty and runs never collide.
    let database = common::unique_name("engram_test");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&format!("/{database}"));
    let registry = Registry::connect_postgres(url.as_str()).await.unwrap();
    registry_contract(&registry).await;
    drop(registry);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .execute(&mut admin)
        .await;
}

const WRITES_PER_PROCESS: usize = 40;

/// Helper child: writes runs and model versions into the SQLite registry named by the parent.
#[tokio::test]
async fn child_writes_to_the_sqlite_registry() {
    if common::child_role().as_deref() != Some("registry-writer") {
        return; // Only meaningful as a child of the two-process test below.
    }
    let path = std::env::var("ENGRAM_TEST_CHILD_DB").unwrap();
    let registry = Registry::open_sqlite(path.as_ref()).await.unwrap();
    println!("OPEN");
    for i in 0..WRITES_PER_PROCESS {
        let run = registry.start_run(&json!({ "i": i }), "0.1.0").await.unwrap();
        registry
            .register_model(model(&format!("p{}-{i}", std::process::id())))
            .await
            .unwrap();
        registry.finish_run(&run.id, RunStatus::Succeeded, None).await.unwrap();
    }
    println!("DONE");
}

#[tokio::test]
async fn two_processes_use_the_sqlite_registry_at_once() {
    if common::child_role().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.sqlite");
    Registry::open_sqlite(&path).await.unwrap();
    let env = vec![("ENGRAM_TEST_CHILD_DB", path.display().to_string())];
    let children: Vec<_> = (0..2)
        .map(|_| common::spawn_child("child_writes_to_the_sqlite_registry", "registry-writer", &env))
        .collect();
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a writer process failed: {status}");
    }
    let registry = Registry::open_sqlite(&path).await.unwrap();
    let models = registry.models().await.unwrap();
    assert_eq!(models.len(), 2 * WRITES_PER_PROCESS);
    let mut versions: Vec<_> = models.iter().map(|m| m.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=(2 * WRITES_PER_PROCESS) as i64).collect::<Vec<_>>());
    assert!(
        registry
            .runs(1000)
            .await
            .unwrap()
            .iter()
            .all(|r| r.status == RunStatus::Succeeded)
    );
    common::report("PASSED: sqlite registry: two processes wrote at once, both succeeded");
}
