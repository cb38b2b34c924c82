-- The teacher's answers, by hash of (teacher, prompt, parameters): a rerun of a distillation pays
-- nothing twice, and a run killed half-way resumes from what was already answered.
CREATE TABLE teacher_responses (
    key        TEXT PRIMARY KEY,
    teacher    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    response   TEXT NOT NULL
);
