-- What evaluation measured of a model version (test ROUGE, its base's on the same split, ...):
-- written after registration, read by promotion. JSON, '{}' until evaluated.
ALTER TABLE model_versions ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}';

-- The newest checkpoint of each training, by a hash of everything that decides its result (base
-- model, dataset, hyper-parameters, code): a run killed mid-way resumes from here. The checkpoint
-- itself (adapter, optimizer state, step, loss records) is an artifact.
CREATE TABLE train_checkpoints (
    key           TEXT PRIMARY KEY,
    step          BIGINT NOT NULL,
    artifact_hash TEXT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Every move of an alias, so `models rollback` can point `production` back at the version it named
-- before.
-- `seq` orders the moves (several can share a millisecond).
CREATE TABLE alias_history (
    seq      BIGINT PRIMARY KEY,
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    version  BIGINT NOT NULL,
    moved_at BIGINT NOT NULL
);
-- The aliases set before this table existed start its history.
INSERT INTO alias_history (seq, kind, name, version, moved_at)
    SELECT ROW_NUMBER() OVER (ORDER BY updated_at), kind, name, version, updated_at FROM aliases;
