-- Who runs a pipeline run, and when it last said it was alive: a run whose process is gone (its pid
-- no longer exists on its host, or its heartbeat stopped long ago) is marked `interrupted` by the
-- next run instead of showing `running` forever.
ALTER TABLE pipeline_runs ADD COLUMN host TEXT;
ALTER TABLE pipeline_runs ADD COLUMN pid BIGINT;
ALTER TABLE pipeline_runs ADD COLUMN heartbeat_at BIGINT;
