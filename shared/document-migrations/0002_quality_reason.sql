-- Why a scorer gave its score, when it says (the LLM judge's one-line reason). MongoDB keeps it as
-- `quality.reason`.
ALTER TABLE documents ADD COLUMN quality_reason TEXT;
