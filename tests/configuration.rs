//! The binaries' configuration: `--help` documents every variable, the embedded defaults work with
//! no server, and a wrong or unreachable backend fails at start-up naming the variable and address.

use engram_tests::{run, stderr, stdout};

#[test]
fn both_binaries_document_their_variables_in_help() {
    for binary in ["feature-pipeline", "inference-service"] {
        let output = run(binary, &["--help"], &[]);
        assert!(output.status.success(), "{binary} --help failed: {}", stderr(&output));
        let help = stdout(&output);
        for variable in [
            "ENGRAM_HOME",
            "ENGRAM_MONGODB_URI",
            "ENGRAM_QDRANT_URL",
            "ENGRAM_QDRANT_API_KEY",
            "ENGRAM_DATABASE_URL",
            "ENGRAM_ARTIFACTS_URL",
        ] {
            assert!(
                help.contains(variable),
                "{binary} --help does not mention {variable}:\n{help}"
            );
        }
    }
    assert!(stdout(&run("inference-service", &["--help"], &[])).contains("ENGRAM_ADDR"));
}

#[test]
fn embedded_defaults_need_no_server() {
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().to_str().unwrap();
    let output = run("feature-pipeline", &["status", "--json"], &[("ENGRAM_HOME", home_str)]);
    assert!(output.status.success(), "status failed: {}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["backends"]["documents"], "sqlite");
    assert_eq!(report["backends"]["vectors"], "qdrant-edge");
    assert_eq!(report["backends"]["registry"], "sqlite");
    assert_eq!(report["backends"]["artifacts"], "local");
    assert_eq!(report["documents"], 0);
    assert!(home.path().join("registry.sqlite").exists());
    assert!(home.path().join("documents.sqlite").exists());

    let service = run("inference-service", &["--check"], &[("ENGRAM_HOME", home_str)]);
    assert!(
        service.status.success(),
        "inference-service failed: {}",
        stderr(&service)
    );
    assert!(stdout(&service).contains("production model: none"));
}

/// Runs `feature-pipeline status` with one bad variable and checks the error names it and the address.
fn assert_named_error(env: &[(&str, &str)], variable: &str, address: &str) {
    let home = tempfile::tempdir().unwrap();
    let mut env = env.to_vec();
    let home_str = home.path().to_str().unwrap().to_string();
    env.push(("ENGRAM_HOME", &home_str));
    let started = std::time::Instant::now();
    let output = run("feature-pipeline", &["status"], &env);
    let message = stderr(&output);
    assert!(!output.status.success(), "expected a failure for {variable}");
    assert!(message.contains(variable), "error does not name {variable}: {message}");
    assert!(
        message.contains(address),
        "error does not show the address {address}: {message}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "failing took {:?}: fail fast",
        started.elapsed()
    );
}

#[test]
fn unreachable_postgres_names_the_variable() {
    assert_named_error(
        &[("ENGRAM_DATABASE_URL", "postgres://engram:secret@127.0.0.1:1/engram")],
        "ENGRAM_DATABASE_URL",
        "127.0.0.1:1",
    );
}

#[test]
fn a_database_url_that_is_not_postgres_is_refused() {
    assert_named_error(
        &[("ENGRAM_DATABASE_URL", "mysql://127.0.0.1/engram")],
        "ENGRAM_DATABASE_URL",
        "mysql://",
    );
}

#[test]
fn passwords_never_appear_in_errors() {
    let home = tempfile::tempdir().unwrap();
    let output = run(
        "feature-pipeline",
        &["status"],
        &[
            ("ENGRAM_HOME", home.path().to_str().unwrap()),
            ("ENGRAM_DATABASE_URL", "postgres://engram:hunter2@127.0.0.1:1/engram"),
        ],
    );
    assert!(!stderr(&output).contains("hunter2"), "{}", stderr(&output));
}

#[test]
fn a_replica_set_uri_keeps_its_password_out_of_errors_and_help_shows_no_values() {
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().to_str().unwrap();
    let uri = "mongodb://engram:hunter3@127.0.0.1:1,127.0.0.1:2/?replicaSet=rs0&serverSelectionTimeoutMS=1000";
    let output = run(
        "feature-pipeline",
        &["status"],
        &[("ENGRAM_HOME", home_str), ("ENGRAM_MONGODB_URI", uri)],
    );
    let message = stderr(&output);
    assert!(!output.status.success());
    assert!(
        message.contains("ENGRAM_MONGODB_URI") && message.contains("****@"),
        "{message}"
    );
    assert!(!message.contains("hunter3"), "{message}");

    // --help of every subcommand prints no environment variable's value.
    let secrets = [
        ("ENGRAM_DATABASE_URL", "postgres://u:hunter4@db/engram"),
        ("ENGRAM_MONGODB_URI", "mongodb://u:hunter5@a,b/"),
        ("ENGRAM_CRAWL_PROXY", "http://u:hunter6@proxy:3128"),
        ("ENGRAM_QDRANT_URL", "http://u:hunter7@qdrant:6334"),
        ("ENGRAM_TEACHER_API_KEY", "hunter8"),
    ];
    for (binary, args) in [
        ("feature-pipeline", vec!["--help"]),
        ("feature-pipeline", vec!["extract", "crawl", "--help"]),
        ("feature-pipeline", vec!["dataset", "--help"]),
        ("inference-service", vec!["--help"]),
    ] {
        let help = stdout(&run(binary, &args, &secrets));
        assert!(!help.contains("hunter"), "{binary} {args:?} shows a secret:\n{help}");
    }
}

#[test]
fn the_service_refuses_the_network_without_keys() {
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().to_str().unwrap();
    let output = run(
        "inference-service",
        &["--addr", "0.0.0.0:0"],
        &[("ENGRAM_HOME", home_str)],
    );
    let message = stderr(&output);
    assert!(!output.status.success(), "it must not start: {message}");
    assert!(
        message.contains("ENGRAM_API_KEYS") && message.contains("ENGRAM_ALLOW_ANONYMOUS"),
        "{message}"
    );
    let check = run(
        "inference-service",
        &["--check", "--addr", "0.0.0.0:0", "--allow-anonymous"],
        &[("ENGRAM_HOME", home_str)],
    );
    assert!(
        check.status.success(),
        "opened on purpose, it is allowed: {}",
        stderr(&check)
    );
}

#[test]
fn unreachable_mongodb_names_the_variable() {
    assert_named_error(
        &[(
            "ENGRAM_MONGODB_URI",
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1500",
        )],
        "ENGRAM_MONGODB_URI",
        "127.0.0.1:1",
    );
}

#[test]
fn unreachable_qdrant_names_the_variable() {
    assert_named_error(
        &[("ENGRAM_QDRANT_URL", "http://127.0.0.1:1")],
        "ENGRAM_QDRANT_URL",
        "127.0.0.1:1",
    );
}

#[test]
fn unreachable_s3_names_the_variable() {
    assert_named_error(
        &[
            ("ENGRAM_ARTIFACTS_URL", "s3://engram-artifacts"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ],
        "ENGRAM_ARTIFACTS_URL",
        "127.0.0.1:1",
    );
}

#[test]
fn an_artifacts_url_that_is_not_s3_is_refused() {
    assert_named_error(
        &[("ENGRAM_ARTIFACTS_URL", "ftp://host/bucket")],
        "ENGRAM_ARTIFACTS_URL",
        "ftp://host/bucket",
    );
}

#[test]
fn a_home_that_is_not_a_directory_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let output = run(
        "feature-pipeline",
        &["status"],
        &[("ENGRAM_HOME", file.to_str().unwrap())],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("ENGRAM_HOME") && message.contains("a-file"),
        "{message}"
    );
}
