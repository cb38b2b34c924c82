"""A published dataset version through Hugging Face's own `datasets` library, both configurations
(`summarize`, the default, and `qa`), with the summaries and questions written by a real
OpenAI-compatible teacher: engram's inference-service (retrieval turned off through
ENGRAM_TEACHER_EXTRA_BODY), serving the base SmolLM2."""

import json

import datasets
import pytest

from helpers import ROOT, Service, clean_env, pipeline


@pytest.fixture(scope="module")
def teacher(corpus):
    env, _ = corpus
    server = Service(env)
    yield server.base
    assert server.stop() == 0


def test_a_dataset_distilled_by_the_service_loads_with_datasets(teacher, tmp_path):
    env = clean_env(tmp_path / "home")
    pipeline(env, "extract", "files", "samples/notes")
    pipeline(env, "filter")
    out = pipeline(
        env, "dataset",
        "--teacher", "openai", "--teacher-url", f"{teacher}/v1", "--teacher-model", "engram",
        "--teacher-extra-body", json.dumps({"retrieval": {"enabled": False}}),
        "--summaries", "2", "--max-tokens", "40", "--max-document-chars", "800",
        "--qa-chunks-per-document", "2", "--qa-samples", "2",
    )
    assert "dataset: v1" in out, out
    listed = json.loads(pipeline(env, "datasets", "--json"))
    version = listed[0]
    assert version["lineage"]["teacher"] == "openai:engram"
    export = tmp_path / "export"
    pipeline(env, "datasets", "export", "1", str(export))

    rows = version["stats"]["rows"]
    expected = {split: count for split, count in rows.items() if count > 0}
    written = {p.stem: len(p.read_text().splitlines()) for p in (export / "data").glob("*.jsonl")}
    assert written == expected, f"the exported files hold {written} rows; the registry says {rows}"

    # Its own cache under tmp_path: `datasets` keys a local file's cache by path and mtime, and a
    # cache left by an earlier run at the same temporary path must not answer for this one.
    loaded = datasets.load_dataset(str(export), cache_dir=str(tmp_path / "hf-cache"))
    assert {split: loaded[split].num_rows for split in loaded} == expected
    for split in loaded:
        assert {"instruction", "answer", "doc_id", "title", "source"} <= set(loaded[split].column_names)
    # By document: no document's summaries are in two splits.
    owners = {}
    for split in loaded:
        for doc in loaded[split]["doc_id"]:
            assert owners.setdefault(doc, split) == split, f"{doc} is in {owners[doc]} and {split}"
    card = (export / "README.md").read_text()
    assert "openai:engram" in card and "summarize-v1" in card and "qa-v1" in card

    # The second configuration: grounded questions, loaded by name, split by the same documents.
    qa_rows = version["stats"]["qa"]["rows"]
    qa_expected = {split: count for split, count in qa_rows.items() if count > 0}
    stats = version["stats"]["qa"]
    assert stats["asked"] > 0, f"no fact sentence was asked about: {stats}"
    if not qa_expected:
        # A weak teacher may pass no check on six notes: then there is no `qa` configuration at all.
        assert "config_name: qa" not in card
        return
    assert "config_name: qa" in card
    qa = datasets.load_dataset(str(export), "qa", cache_dir=str(tmp_path / "hf-cache"))
    assert {split: qa[split].num_rows for split in qa} == qa_expected
    abstention = "The notes do not say"
    for split in qa:
        assert {"system", "instruction", "answer", "answerable", "cited", "sources", "doc_id"} <= set(qa[split].column_names)
        for row in qa[split]:
            doc = row["doc_id"]
            assert owners.setdefault(doc, split) == split, f"{doc} is in {owners[doc]} and {split}"
            for source in row["sources"]:
                assert owners.setdefault(source["doc_id"], split) == split, f"a {split} row quotes {source['doc_id']}"
                assert source["text"] in row["system"], "the system message quotes every source"
            assert row["instruction"].strip().endswith("?") or "?" in row["instruction"]
            if row["answerable"]:
                cited = row["cited"]
                assert f"[{cited}]" in row["answer"], row
                assert row["sources"][cited - 1]["doc_id"] == doc, row
            else:
                assert row["answer"].startswith(abstention) and row["cited"] is None, row
                assert all(source["doc_id"] != doc for source in row["sources"]), row
