"""schemathesis against the service's own /openapi.json: every check, generated and negative data;
no 5xx and no response that violates the document may come back.

The service runs with small generation and prompt limits (the document says so, and schemathesis
keeps to them) so that each generated chat request finishes in about a second."""

import subprocess
import sys
from pathlib import Path

from helpers import Service


def test_schemathesis_finds_no_server_error_and_no_schema_violation(corpus, tmp_path):
    env, _ = corpus
    # Small limits keep every generated request short: a long generated conversation once took
    # longer than the request timeout on a loaded 2-core machine (schemathesis ST112); past 512
    # prompt tokens the service answers 400 at once.
    server = Service(
        env, "--max-completion-tokens", "2", "--max-prompt-tokens", "512", "--top-k", "2", "--max-queue", "64"
    )
    try:
        command = [
            str(Path(sys.executable).parent / "schemathesis"), "run", f"{server.base}/openapi.json",
            "--checks", "all", "--max-examples", "30", "--seed", "20261126", "--workers", "1",
            "--request-timeout", "120", "--report", "junit", "--report-dir", str(tmp_path),
        ]
        # Run from tmp_path: schemathesis keeps a cache in .schemathesis/ under its working directory.
        result = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
        print(result.stdout[-8000:])
        assert result.returncode == 0, f"schemathesis found problems:\n{result.stdout[-8000:]}\n{result.stderr[-2000:]}"
    finally:
        assert server.stop() == 0
