"""deploy/validate.py passes on the shipped deploy files and catches a deliberately broken copy of
each kind: a Kubernetes manifest, the compose file, a Dockerfile."""

import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

DEPLOY = ROOT / "deploy"


def validate(directory):
    result = subprocess.run([sys.executable, str(DEPLOY / "validate.py"), str(directory)], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def test_the_shipped_deploy_files_are_valid():
    code, output = validate(DEPLOY)
    assert code == 0, output
    assert "every deploy file is valid" in output


@pytest.mark.parametrize(
    "file, good, bad, named",
    [
        # a typo'd field: strict schema validation rejects unknown properties
        ("k8s/base/service-deployment.yaml", "readinessProbe:", "readynessProbe:", "k8s/base"),
        # a wrong type reached only through the overlay
        ("k8s/overlays/example/service-replicas.yaml", "maxReplicas: 3", "maxReplicas: three", "k8s/overlays/example"),
        # a depends_on condition the compose specification does not know
        ("compose.yaml", "condition: service_completed_successfully", "condition: service_done", "compose.yaml"),
        # a Dockerfile that changes directory with cd instead of WORKDIR (hadolint DL3003)
        ("docker/Dockerfile", "WORKDIR /src\n", "RUN cd /src\n", "docker/Dockerfile"),
    ],
)
def test_a_broken_copy_is_caught(tmp_path, file, good, bad, named):
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    target = copy / file
    text = target.read_text()
    assert good in text, f"{file} no longer contains {good!r}: update this test"
    target.write_text(text.replace(good, bad, 1))
    code, output = validate(copy)
    assert code == 1, output
    assert named in output.split("problem(s) in", 1)[1], output
