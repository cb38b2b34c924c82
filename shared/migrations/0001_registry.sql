-- engram's registry. One set of migrations for SQLite (embedded default) and PostgreSQL:
-- portable types only (TEXT, BIGINT, DOUBLE PRECISION), timestamps as Unix milliseconds,
-- JSON as TEXT, version numbers allocated by the application inside a unique key.

CREATE TABLE pipeline_runs (
    id           TEXT PRIMARY KEY,
    status       TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    code_version TEXT NOT NULL,
    config_hash  TEXT NOT NULL,
    config       TEXT NOT NULL,
    error        TEXT
);

CREATE TABLE pipeline_steps (
    run_id       TEXT NOT NULL REFERENCES pipeline_runs (id),
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    code_version TEXT NOT NULL,
    config_hash  TEXT NOT NULL,
    input_hash   TEXT NOT NULL,
    output_hash  TEXT,
    detail       TEXT NOT NULL,
    error        TEXT,
    PRIMARY KEY (run_id, name)
);

-- The step cache looks up a success by what the step is and what it read.
CREATE INDEX pipeline_steps_cache ON pipeline_steps (name, code_version, config_hash, input_hash, status);

CREATE TABLE dataset_versions (
    version           BIGINT PRIMARY KEY,
    created_at        BIGINT NOT NULL,
    run_id            TEXT,
    artifact_hash     TEXT NOT NULL,
    document_set_hash TEXT NOT NULL,
    lineage           TEXT NOT NULL,
    stats             TEXT NOT NULL
);

CREATE TABLE model_versions (
    version         BIGINT PRIMARY KEY,
    created_at      BIGINT NOT NULL,
    run_id          TEXT,
    name            TEXT NOT NULL,
    format          TEXT NOT NULL,
    artifact_hash   TEXT NOT NULL,
    dataset_version BIGINT,
    lineage         TEXT NOT NULL
);

CREATE TABLE index_versions (
    version         BIGINT PRIMARY KEY,
    created_at      BIGINT NOT NULL,
    run_id          TEXT,
    status          TEXT NOT NULL,
    collection      TEXT NOT NULL,
    embedding_model TEXT NOT NULL,
    dimension       BIGINT NOT NULL,
    distance        TEXT NOT NULL,
    manifest        TEXT NOT NULL
);

-- An alias names one version of one kind of thing: models have `production` and `staging`,
-- the index has `live`. Moving an alias is one row update.
CREATE TABLE aliases (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);

-- The last version number handed out per versioned table. Incrementing this row inside the insert's
-- transaction serialises allocation (a row lock on PostgreSQL, the write lock on SQLite), so
-- concurrent writers get distinct, dense numbers without retries.
CREATE TABLE version_counters (
    name TEXT PRIMARY KEY,
    last BIGINT NOT NULL
);

INSERT INTO version_counters (name, last) VALUES ('dataset_versions', 0), ('model_versions', 0), ('index_versions', 0);
