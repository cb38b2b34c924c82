-- The embedded document store (SQLite). MongoDB keeps the same fields in the `documents` collection.
CREATE TABLE documents (
    id              TEXT PRIMARY KEY,
    source          TEXT NOT NULL,
    url             TEXT NOT NULL,
    title           TEXT NOT NULL,
    content         TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    content_hash    TEXT NOT NULL,
    quality_score   REAL,
    quality_scorer  TEXT,
    quality_version TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE INDEX documents_source ON documents (source);
CREATE INDEX documents_updated_at ON documents (updated_at);
