"""The official `openai` Python client against engram's chat endpoint.

The real binaries (ENGRAM_BIN_DIR, set by scripts/test.sh) build the sample corpus's index and
register the base model into a temporary ENGRAM_HOME (conftest.py); the service is started on a free
loopback port, and the client asks a question about the corpus, whole and streamed.
"""

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import urllib.request

import urllib.error

import openai
import pytest

from helpers import EXPECTED_TITLE, QUESTION, ROOT, Service, pipeline, ready


@pytest.fixture(scope="module")
def service(corpus):
    env, home = corpus
    server = Service(env, "--reload-interval-secs", "1")
    yield server.base, env, home
    assert server.stop() == 0, "SIGTERM ends the service cleanly"


def service_pid(base):
    """The pid of the inference-service listening at `base`, found by its command line."""
    address = base.split("//", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"inference-service") and address.encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no inference-service process listens on {address}")


def client(service):
    base = service[0] if isinstance(service, tuple) else service
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


def test_a_whole_answer_with_usage_and_sources(service):
    completion = client(service).chat.completions.create(
        model="engram",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=32,
        temperature=0,
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    sources = completion.model_extra["sources"]
    assert sources[0]["title"] == EXPECTED_TITLE, sources
    assert {"title", "url", "doc_id", "chunk_id", "score"} <= set(sources[0])


def test_a_streamed_answer_ends_with_usage(service):
    stream = client(service).chat.completions.create(
        model="engram",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    first = chunks[0]
    assert first.object == "chat.completion.chunk"
    assert first.model_extra["sources"][0]["title"] == EXPECTED_TITLE
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(last) == 1, "one chunk ends the answer"
    marked = last[0].model_extra["sources"]
    assert [s["chunk_id"] for s in marked] == [s["chunk_id"] for s in first.model_extra["sources"]]
    assert all(s["cited"] in (True, False) for s in marked), "the last chunk marks the cited sources"
    assert first.model_extra["retrieval"]["query"] == QUESTION


def chat(base, body):
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def is_dal(title):
    # The export holds "Weeknight Dal" and an exact "Copy of Weeknight Dal"; the filter keeps one.
    return title.endswith("Weeknight Dal")


def test_a_follow_up_is_searched_with_the_question_it_follows(service):
    base = service[0]
    follow_up = "And how long does it keep in the fridge?"
    alone = chat(base, {"messages": [{"role": "user", "content": follow_up}], "max_tokens": 1,
                        "retrieval": {"abstain": False}})
    assert not any(is_dal(s["title"]) for s in alone["sources"]), "alone, the follow-up does not find the dal"
    assert alone["retrieval"]["rewritten"] is False
    conversation = [
        {"role": "user", "content": "What goes into the weeknight dal?"},
        {"role": "assistant", "content": "Red lentils, turmeric, a tomato and a tadka [1]."},
        {"role": "user", "content": follow_up},
    ]
    answer = chat(base, {"messages": conversation, "max_tokens": 24, "temperature": 0})
    retrieval = answer["retrieval"]
    assert retrieval["rewritten"] is True and "weeknight dal" in retrieval["query"].lower(), retrieval
    assert is_dal(answer["sources"][0]["title"]), answer["sources"]
    assert retrieval["abstained"] is False and answer["choices"][0]["message"]["content"].strip()


def test_a_question_the_notes_cannot_answer_gets_the_abstention_without_generation(service):
    base = service[0]
    question = [{"role": "user", "content": "Who won the football world cup in 1966?"}]
    answer = chat(base, {"messages": question, "max_tokens": 32})
    assert answer["retrieval"]["abstained"] is True, answer["retrieval"]
    assert answer["retrieval"]["closest"] < 0.35
    assert "notes do not say" in answer["choices"][0]["message"]["content"]
    assert answer["sources"] == [] and answer["usage"]["completion_tokens"] == 0
    # Per request, abstention can be turned off: the model answers from the closest chunks.
    forced = chat(base, {"messages": question, "max_tokens": 8, "retrieval": {"abstain": False}})
    assert forced["retrieval"]["abstained"] is False and forced["usage"]["completion_tokens"] > 0
    assert forced["sources"]
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert any(line.startswith("engram_abstentions_total ") and float(line.split()[1]) >= 1
                   for line in response.read().decode().splitlines())


def test_a_question_naming_what_no_source_states_gets_the_abstention(service):
    base = service[0]
    # Close to the Lisbon notes by meaning, but no note names a Wi-Fi: the names must match.
    question = [{"role": "user", "content": "What is the Wi-Fi password at the Graça apartment?"}]
    answer = chat(base, {"messages": question, "max_tokens": 32})
    retrieval = answer["retrieval"]
    # `unstated` is set only when the relevance threshold would have answered: the names declined.
    assert retrieval["abstained"] is True and retrieval["unstated"] == "Wi-Fi", retrieval
    content = answer["choices"][0]["message"]["content"]
    assert "notes do not say" in content and "mentions “Wi-Fi”" in content, content
    assert answer["usage"]["completion_tokens"] == 0
    forced = chat(base, {"messages": question, "max_tokens": 8, "retrieval": {"abstain": False}})
    assert forced["retrieval"]["abstained"] is False and "unstated" not in forced["retrieval"]
    # A name the notes state does not stop an answer.
    named = chat(base, {"messages": [{"role": "user", "content": "What time does the bakery on Rua da Graça open?"}],
                        "max_tokens": 8})
    assert named["retrieval"]["abstained"] is False and "unstated" not in named["retrieval"], named["retrieval"]
    # A follow-up is held to its own names, not to those of the question it follows.
    follow_up = question + [
        {"role": "assistant", "content": content},
        {"role": "user", "content": "And what time does the bakery on Rua da Graça open?"},
    ]
    followed = chat(base, {"messages": follow_up, "max_tokens": 8})
    assert followed["retrieval"]["rewritten"] is True, followed["retrieval"]
    assert followed["retrieval"]["abstained"] is False and "unstated" not in followed["retrieval"], followed["retrieval"]


def test_sources_carry_snippets_and_are_marked_when_cited(service):
    answer = chat(service[0], {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 48, "temperature": 0})
    content = answer["choices"][0]["message"]["content"]
    for source in answer["sources"]:
        assert source["snippet"].strip() and len(source["snippet"]) <= 321
        number = source["index"]
        if f"[{number}]" in content:
            assert source["cited"] is True, (number, content)
        if source["cited"]:
            brackets = re.findall(r"\[([^\]]*)\]", content)
            assert any(str(number) in inside for inside in brackets), (number, content)
        assert source["cited"] in (True, False)


def corpus_text():
    """Every sample document's text, as the extractive answers quote it: entities decoded, bold
    markers and runs of whitespace gone."""
    import html
    texts = []
    for path in (ROOT / "samples").rglob("*"):
        if path.suffix in (".md", ".html", ".txt") and path.is_file():
            texts.append(html.unescape(path.read_text(encoding="utf-8", errors="replace")))
    return re.sub(r"\s+", " ", "\n".join(texts).replace("**", ""))


def test_an_extractive_answer_quotes_a_source_sentence_and_cites_it(service):
    base = service[0]
    body = {"messages": [{"role": "user", "content": QUESTION}], "retrieval": {"answer": "extract"}}
    answer = chat(base, body)
    content = answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0 and answer["choices"][0]["finish_reason"] == "stop"
    if "notes do not say" in content:
        assert all(not s["cited"] for s in answer["sources"]), answer["sources"]
    else:
        quoted = re.fullmatch(r"(.+) \[(\d+)\]([.!]?)", content)
        assert quoted, f"a sentence and one citation: {content!r}"
        sentence, number = quoted.group(1) + quoted.group(3), int(quoted.group(2))
        cited = [s["index"] for s in answer["sources"] if s["cited"]]
        assert cited == [number], (cited, content)
        assert re.sub(r"\s+", " ", sentence.rstrip(".!")) in corpus_text(), f"not a sentence of the notes: {content!r}"
    # Streamed, the same answer arrives whole; three asked at once take turns (one is scored at a
    # time) and each gets it.
    def streamed():
        chunks = client(service).chat.completions.create(
            model="engram", messages=body["messages"], stream=True, extra_body={"retrieval": {"answer": "extract"}}
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(3) as pool:
        texts = [pool.submit(streamed) for _ in range(3)]
        assert [text.result(timeout=300) for text in texts] == [content] * 3
    with pytest.raises(urllib.error.HTTPError) as error:
        chat(base, {**body, "retrieval": {"answer": "guess"}})
    assert error.value.code == 400


def test_unsupported_requests_get_openai_errors(service):
    with pytest.raises(openai.BadRequestError) as error:
        client(service).chat.completions.create(
            model="engram", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert error.value.body["param"] == "n"


def test_search_returns_the_right_document(service):
    request = urllib.request.Request(
        f"{service[0]}/v1/search",
        data=json.dumps({"query": QUESTION, "top_k": 3}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        results = json.load(response)["results"]
    assert results[0]["source"]["title"] == EXPECTED_TITLE


def test_metrics_count_requests_tokens_and_time_to_first_token(service):
    with urllib.request.urlopen(f"{service[0]}/metrics", timeout=10) as response:
        text = response.read().decode()
    lines = text.splitlines()

    def value(prefix):
        matching = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)]
        assert matching, f"no {prefix} in /metrics:\n{text}"
        return sum(matching)

    assert value('engram_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}') >= 2
    assert value('engram_http_requests_total{method="POST",route="/v1/chat/completions",status="400"}') >= 1
    assert value("engram_time_to_first_token_seconds_count") >= 2
    assert value("engram_inter_token_latency_seconds_count") >= 1, "answers of several pieces time the gaps"
    assert value("engram_completion_tokens_total") > 0
    assert value("engram_batch_size_count") >= 2, "every decode step observes its batch"
    assert value("engram_batch_size_sum") >= value("engram_batch_size_count")
    assert value("engram_kv_cache_capacity_bytes") == 1024 * 2**20
    assert value("engram_kv_cache_used_bytes") >= 0
    assert value("engram_running_sequences") >= 0
    assert value("engram_model_info{") == 1
    assert value("engram_index_info{") == 1


def models_status(base, authorization):
    request = urllib.request.Request(f"{base}/v1/models", headers={"Authorization": authorization})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_api_keys_guard_the_v1_routes_rotate_without_a_restart_and_failures_are_counted(service, tmp_path):
    _, env, _ = service
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nsecret-one\n")
    server = Service(env, "--api-keys", str(keys), "--api-keys-reload-secs", "1", probe="/healthz")
    base = server.base
    try:
        with pytest.raises(openai.AuthenticationError) as error:
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        assert "API key" in error.value.body["message"]
        models = openai.OpenAI(base_url=f"{base}/v1", api_key="secret-one", max_retries=0).models.list()
        assert len(models.data) == 1
        assert models_status(base, "bearer secret-one") == 200, "the scheme matches in any case"
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            page = response.read().decode()
        assert "/v1/chat/completions" in page and "<title>engram</title>" in page

        # The key is rotated in the file: the new one works and the old one stops, no restart.
        keys.write_text("secret-two-rotated\n")
        deadline = time.time() + 20
        while models_status(base, "Bearer secret-two-rotated") != 200:
            assert time.time() < deadline, "the rotated key was not picked up"
            time.sleep(0.3)
        assert models_status(base, "Bearer secret-one") == 401
        # A broken file keeps the keys in force.
        keys.write_text("sha256:not-hex\n")
        time.sleep(2.5)
        assert models_status(base, "Bearer secret-two-rotated") == 200

        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'engram_auth_failures_total{reason="unknown_key"}' in metrics, metrics
        assert server.stop() == 0
        log = server.process.stderr.read()
        assert "authentication failed" in log, log
        assert "secret-one" not in log and "wrong" not in log, "keys are never logged"
    finally:
        if server.process.poll() is None:
            server.stop()


def test_ten_rebuilds_under_reload_keep_memory_and_disk_bounded(service):
    """The service releases index versions it no longer serves: its resident memory and the reader
    copies on disk do not grow with the number of rebuilds."""
    base, env, home = service
    pid = service_pid(base)

    def rss_mib():
        with open(f"/proc/{pid}/status") as status:
            line = next(l for l in status if l.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def rebuild():
        before = ready(base)["index"]["version"]
        pipeline(env, "index")
        deadline = time.time() + 60
        while ready(base)["index"]["version"] == before:
            assert time.time() < deadline, "the rebuilt index was not picked up"
            time.sleep(0.3)
        # A question on the new version opens it.
        client(base).chat.completions.create(
            model="engram", messages=[{"role": "user", "content": QUESTION}], max_tokens=1, temperature=0
        )

    for _ in range(3):
        rebuild()
    settled = rss_mib()
    for _ in range(7):
        rebuild()
    grown = rss_mib() - settled
    readers = home / "vectors" / ".readers"
    copies = [p for p in readers.iterdir() if not p.name.endswith(".lock")] if readers.exists() else []
    versions = [p for p in (home / "vectors").iterdir() if p.name.startswith("chunks_v")]
    print(f"\nrebuilds: RSS after 3 {settled:.0f} MiB, after 10 +{grown:.0f} MiB; {len(copies)} reader copies, {len(versions)} versions on disk")
    # The builder closes a version before it goes live, so the service opens each in place; it once
    # opened a private copy whenever it reloaded before the builder's process exited, and each copy
    # raised its resident memory by about 90 MiB for good (measured: 359 -> 457 MiB at one copy, then
    # flat; with in-place opens 365 -> 372 MiB over ten rebuilds).
    assert grown < 40, f"the service's memory grew by {grown:.0f} MiB over 7 rebuilds"
    assert copies == [], f"the service read private copies: {copies}"
    assert len(versions) <= 4, versions


def test_a_promotion_and_a_rebuild_are_picked_up_without_failed_requests(service, tmp_path):
    """Load test, bounded and loopback only: 8 clients stream answers while a new model is promoted
    and the index is rebuilt; no request may fail. Prints time-to-first-token percentiles."""
    import threading

    base, env, _ = service
    before = ready(base)
    failures, answers, first_token, stop = [], [], [], threading.Event()

    def ask():
        while not stop.is_set():
            try:
                started = time.monotonic()
                stream = client(base).chat.completions.create(
                    model="engram", messages=[{"role": "user", "content": QUESTION}], max_tokens=4,
                    temperature=0, stream=True,
                )
                model, seen_text = None, False
                for chunk in stream:
                    model = chunk.model
                    if not seen_text and chunk.choices and chunk.choices[0].delta.content:
                        seen_text = True
                        first_token.append(time.monotonic() - started)
                answers.append(model)
            except Exception as error:  # every failure counts
                failures.append(repr(error))

    workers = [threading.Thread(target=ask) for _ in range(8)]
    for worker in workers:
        worker.start()
    # A new model file (same weights, one more byte: a different sha256) and a new index version.
    model = tmp_path / "SmolLM2-135M-Instruct-retrained.gguf"
    model.write_bytes((ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes() + b"\0")
    pipeline(env, "models", "register", str(model), "--promote")
    pipeline(env, "index")
    deadline = time.time() + 120
    while True:
        now = ready(base)
        if now["model"]["version"] != before["model"]["version"] and now["index"]["version"] != before["index"]["version"]:
            break
        assert time.time() < deadline, f"not reloaded: {now}"
        time.sleep(0.5)
    stop.set()
    for worker in workers:
        worker.join(timeout=300)
    assert failures == [], failures
    assert len(answers) >= 8, "requests ran during the swap"
    ordered = sorted(first_token)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"\nload: 8 clients, {len(answers)} streamed answers, 0 errors; time to first token p50 {p50:.2f} s, p99 {p99:.2f} s")
    after = client(base).chat.completions.create(
        model="engram", messages=[{"role": "user", "content": QUESTION}], max_tokens=4, temperature=0
    )
    assert after.model.endswith("-v2"), after.model
    assert after.model_extra["sources"][0]["title"] == EXPECTED_TITLE


def test_json_logs_carry_the_request_id_and_no_colour_codes(corpus):
    env, _ = corpus
    server = Service({**env, "ENGRAM_LOG": "info,qdrant_edge=error", "ENGRAM_LOG_FORMAT": "json"})
    try:
        request = urllib.request.Request(
            f"{server.base}/v1/chat/completions",
            data=json.dumps({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}).encode(),
            headers={"content-type": "application/json", "x-request-id": "test-req-42"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.headers["x-request-id"] == "test-req-42", "the client's id comes back"
            json.load(response)
        with urllib.request.urlopen(f"{server.base}/healthz", timeout=10) as response:
            made = response.headers["x-request-id"]
            assert made and made != "test-req-42", "a request without an id gets one"
    finally:
        assert server.stop() == 0
    output = server.process.stderr.read()
    assert "\x1b[" not in output, "no terminal colour codes in a pipe"
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert lines, "the service logged"
    tagged = [line for line in lines if any(span.get("request_id") == "test-req-42" for span in line.get("spans", []))]
    messages = [line["fields"].get("message", "") for line in tagged]
    assert "chat completion" in messages, messages
    assert "generated" in messages, f"the model thread logs in the request's span: {messages}"


def test_searches_beyond_their_bound_get_429_and_the_rest_are_served(corpus):
    env, _ = corpus
    server = Service(env, "--max-searches", "1")
    try:
        barrier = threading.Barrier(24)

        def search(_):
            request = urllib.request.Request(
                f"{server.base}/v1/search",
                data=json.dumps({"query": QUESTION, "top_k": 3}).encode(),
                headers={"content-type": "application/json"},
            )
            barrier.wait()
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, None, json.load(response)
            except urllib.error.HTTPError as error:
                return error.code, error.headers.get("Retry-After"), json.load(error)

        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(pool.map(search, range(24)))
    finally:
        assert server.stop() == 0
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    for status, retry_after, body in results:
        if status == 429:
            assert retry_after and "ENGRAM_MAX_SEARCHES" in body["error"]["message"], body
        else:
            assert body["results"][0]["source"]["title"] == EXPECTED_TITLE
