"""Shared pieces of the deployment tests: the chart rendered offline, and settings look-ups.

Nothing here needs Docker, a cluster or the network: helm-python-sdk renders the chart in
process, kubernetes-validate carries the Kubernetes schemas, hadolint is a local binary.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from pydantic import BaseModel

from skyeye.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "skyeye"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
# the Kubernetes version the manifests are validated against (kubernetes-validate ships it)
KUBERNETES_VERSION = "1.33.0"
RELEASE = "skyeye"
VENV_BIN = Path(sys.executable).parent


def production_values() -> dict[str, Any]:
    """The production-like values file the chart ships for CI."""
    return yaml.safe_load(PRODUCTION_VALUES.read_text())


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders with ``values`` (on top of values.yaml), hooks included."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values or {}, name=RELEASE, namespace="skyeye", is_install=True)
    manifests = []
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The manifests of one kind."""
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one manifest of ``kind`` called ``name``."""
    (found,) = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    return found


def pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every Deployment, Job and RayService pod template."""
    for m in manifests:
        where = f"{m['kind']}/{m['metadata']['name']}"
        if m["kind"] in ("Deployment", "Job"):
            yield where, m["spec"]["template"]["spec"]
        elif m["kind"] == "RayService":
            cluster = m["spec"]["rayClusterConfig"]
            yield f"{where}/head", cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster["workerGroupSpecs"]:
                yield f"{where}/{group['groupName']}", group["template"]["spec"]


def is_setting(variable: str) -> bool:
    """Whether ``SKYEYE_...`` names a field of Settings (nested fields joined by ``__``)."""
    parts = variable.removeprefix("SKYEYE_").lower().split("__")
    model: type[BaseModel] = Settings
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if depth < len(parts) - 1:
            nested = field.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return False
            model = nested
    return True


@pytest.fixture(scope="session")
def default_manifests() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="session")
def production_manifests() -> list[dict[str, Any]]:
    return render(production_values())


@pytest.fixture(scope="session", params=["default", "production"])
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The chart rendered with its defaults, then with the production-like values."""
    return request.getfixturevalue(f"{request.param}_manifests")
