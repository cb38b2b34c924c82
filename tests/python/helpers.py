"""What the real-client tests share: the binaries, the sample corpus's engram home, and starting the
service on a free loopback port."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("ENGRAM_BIN_DIR", ROOT / "target" / "debug"))
QUESTION = "What k value do we use for reciprocal rank fusion in hybrid search?"
EXPECTED_TITLE = "Vector search notes"


def pipeline(env, *args):
    result = subprocess.run([str(BIN / "feature-pipeline"), *args], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"feature-pipeline {args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home):
    """The test's environment: no ENGRAM_* or AWS_* from outside, the embedded stores under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_", "AWS_"))}
    env.update({"ENGRAM_HOME": str(home), "ENGRAM_LOG": "warn"})
    return env


def build_corpus(home):
    """Extracts, filters and indexes the sample export and registers the base model, promoted."""
    env = clean_env(home)
    pipeline(env, "extract", "notion", "samples/notion-export")
    pipeline(env, "filter")
    pipeline(env, "index")
    pipeline(env, "models", "register", "models/SmolLM2-135M-Instruct.Q4_1.gguf", "--promote")
    return env


class Service:
    """An inference-service process on a free loopback port."""

    def __init__(self, env, *args, probe="/readyz"):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(BIN / "inference-service"), "--addr", f"127.0.0.1:{port}", *args],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}{probe}", timeout=2) as response:
                    if response.status == 200:
                        break
            except Exception:
                pass
            assert self.process.poll() is None, f"the service exited: {self.process.stderr.read()}"
            assert time.time() < deadline, f"the service did not answer {probe} in 120 s"
            time.sleep(0.3)

    def stop(self):
        """SIGTERM; returns the exit code."""
        self.process.terminate()
        return self.process.wait(timeout=60)


def ready(base):
    with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
        return json.load(response)
