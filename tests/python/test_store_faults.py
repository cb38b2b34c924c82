"""Stores that stop answering: the pipeline fails with an error naming the store and the next run
completes; the service says it is not ready while its registry is gone and recovers on its own.

Each test starts its own throwaway server (a PostgreSQL cluster on a free port, SecantusDB, moto's S3
server), so stopping it disturbs nothing else. The servers' programs are those scripts/test.sh uses:
PostgreSQL's binaries from Debian's packages, and the test venv's `secantusd-py` and `moto_server`.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import BIN, QUESTION, ROOT, Service, clean_env, free_port

VENV_BIN = Path(sys.executable).parent


def wait_for(predicate, seconds, what):
    deadline = time.time() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, f"{what} within {seconds} s"
        time.sleep(0.3)


def answers(port):
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


class Postgres:
    """A throwaway PostgreSQL cluster on a free loopback port, stopped and started at will."""

    def __init__(self):
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            pytest.fail("no PostgreSQL binaries under /usr/lib/postgresql: scripts/test.sh installs them")
        self.bin = found[-1].parent
        # Its own directory outside pytest's (which only root may enter): PostgreSQL runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="engram-faults-pg-"))
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.run_as:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._ctl([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self.start()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, argv):
        result = subprocess.run(self.run_as + argv, capture_output=True, text=True)
        assert result.returncode == 0, f"{argv[0]}: {result.stdout}\n{result.stderr}"

    def start(self):
        self._ctl([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                   "-o", f"-p {self.port} -h 127.0.0.1 -k /tmp", "start"])
        wait_for(lambda: answers(self.port), 30, "PostgreSQL answers")

    def stop(self):
        self._ctl([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])


@pytest.fixture
def postgres():
    server = Postgres()
    yield server
    try:
        server.stop()
    except AssertionError:
        pass  # already stopped
    shutil.rmtree(server.root, ignore_errors=True)


class Server:
    """A test-venv server program on a free port (in memory: a restart starts empty)."""

    def __init__(self, argv_for_port):
        self.argv_for_port = argv_for_port
        self.port = free_port()
        self.process = None
        self.start()

    def start(self):
        self.process = subprocess.Popen(self.argv_for_port(self.port), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(lambda: answers(self.port), 60, f"{self.argv_for_port(self.port)[0]} answers")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def run(env, *args):
    return subprocess.run([str(BIN / "feature-pipeline"), *args], env=env, cwd=ROOT, capture_output=True, text=True)


def ok(env, *args):
    result = run(env, *args)
    assert result.returncode == 0, f"feature-pipeline {args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def ok_said(env, *args):
    """Like `ok`, with what it printed on stderr too (the summary lines)."""
    result = run(env, *args)
    assert result.returncode == 0, f"feature-pipeline {args}: {result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def failed_clearly(result, *names):
    """The run failed, without a panic, with an error that names the store."""
    text = result.stdout + result.stderr
    assert result.returncode != 0, f"the run did not fail: {text}"
    assert "panicked" not in text, text
    lowered = text.lower()
    assert any(name.lower() in lowered for name in names), f"the error names none of {names}: {text}"


def test_the_pipeline_names_a_stopped_registry_and_the_next_run_completes(postgres, tmp_path):
    env = clean_env(tmp_path / "home")
    env["ENGRAM_DATABASE_URL"] = postgres.url
    ok(env, "extract", "notion", "samples/notion-export")
    ok(env, "filter")
    # Stopped while the index is being built: the build fails or finishes, never half-publishes.
    build = subprocess.Popen([str(BIN / "feature-pipeline"), "index"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    postgres.stop()
    stdout, stderr = build.communicate(timeout=300)
    if build.returncode != 0:
        assert "panicked" not in stderr, stderr
    failed_clearly(run(env, "indexes"), "postgres", "ENGRAM_DATABASE_URL")
    postgres.start()
    ok(env, "index")
    listed = json.loads(ok(env, "indexes", "--json"))
    live = [v for v in listed["versions"] if v["live"]]
    assert len(live) == 1 and live[0]["status"] == "ready", listed
    assert all(v["status"] in ("ready", "dropped") for v in listed["versions"]), listed


def test_the_pipeline_names_a_stopped_document_store_and_the_next_run_completes(tmp_path):
    mongo = Server(lambda port: [str(VENV_BIN / "secantusd-py"), "--host", "127.0.0.1", "--port", str(port),
                                 "--storage-path", ":memory:", "--standalone"])
    try:
        env = clean_env(tmp_path / "home")
        env["ENGRAM_MONGODB_URI"] = f"mongodb://127.0.0.1:{mongo.port}/?directConnection=true&serverSelectionTimeoutMS=3000"
        ok(env, "extract", "notion", "samples/notion-export")
        mongo.stop()
        failed_clearly(run(env, "filter"), "mongodb", "ENGRAM_MONGODB_URI")
        mongo.start()  # in memory: it comes back empty, and the run extracts again
        ok(env, "extract", "notion", "samples/notion-export")
        assert "kept" in ok_said(env, "filter")
    finally:
        mongo.stop()


def test_the_pipeline_names_a_stopped_object_store_and_the_next_run_completes(tmp_path):
    s3 = Server(lambda port: [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)])
    try:
        env = clean_env(tmp_path / "home")
        endpoint = f"http://127.0.0.1:{s3.port}"
        env.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "ENGRAM_ARTIFACTS_URL": "s3://faults"})

        def bucket():
            import boto3

            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                         region_name="us-east-1").create_bucket(Bucket="faults")

        bucket()
        ok(env, "extract", "notion", "samples/notion-export")
        s3.stop()
        failed_clearly(run(env, "filter"), "s3", "ENGRAM_ARTIFACTS_URL", "object store")
        s3.start()
        bucket()
        assert "kept" in ok_said(env, "filter")
    finally:
        s3.stop()


def readiness(base):
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_the_service_is_not_ready_while_its_registry_is_gone_and_recovers_on_its_own(postgres, tmp_path):
    env = clean_env(tmp_path / "home")
    env["ENGRAM_DATABASE_URL"] = postgres.url
    ok(env, "extract", "notion", "samples/notion-export")
    ok(env, "filter")
    ok(env, "index")
    ok(env, "models", "register", "models/SmolLM2-135M-Instruct.Q4_1.gguf", "--promote")
    server = Service(env, "--reload-interval-secs", "1")
    try:
        status, body = readiness(server.base)
        assert status == 200 and body["stores"]["registry"]["ok"] and "reason" not in body, body
        postgres.stop()
        status, body = wait_for(lambda: (r := readiness(server.base))[0] == 503 and r, 60,
                                "/readyz says 503 once the registry is gone")
        assert not body["ready"] and not body["stores"]["registry"]["ok"], body
        assert body["stores"]["registry"]["error"], body
        assert body["reason"].startswith("the registry does not answer"), body
        assert body["stores"]["vectors"]["ok"], body
        # What is loaded still answers: the registry is read only to pick up new versions.
        request = urllib.request.Request(
            f"{server.base}/v1/chat/completions",
            data=json.dumps({"model": "engram", "messages": [{"role": "user", "content": QUESTION}],
                             "max_tokens": 4, "temperature": 0}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
        postgres.start()
        wait_for(lambda: readiness(server.base)[0] == 200, 60, "/readyz says 200 again once the registry is back")
    finally:
        assert server.stop() == 0
