"""The tree's rules, checked: the runtime never loads the demo model's lab, consumers never load
torch, and a service never imports another service."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"


def _imported(module: str) -> set[str]:
    """Every module a fresh interpreter loads to import ``module``, from ``-X importtime``."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    # each line: "import time: self | cumulative | <indent>name"
    return {
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.mark.parametrize(
    "module",
    [
        "skyeye.services.worker",
        "skyeye.services.planner",
        "skyeye.services.reconciler",
        "skyeye.services.inference",
        "skyeye.stack.launcher",
        "skyeye.cli.main",
    ],
)
def test_the_runtime_never_imports_the_lab(module: str) -> None:
    loaded = _imported(module)
    assert module in loaded  # the parse found the import lines at all
    assert not {m for m in loaded if m == "skyeye.lab" or m.startswith("skyeye.lab.")}


@pytest.mark.parametrize(
    "module", ["skyeye.services.worker", "skyeye.services.planner", "skyeye.services.reconciler"]
)
def test_consumers_never_load_torch(module: str) -> None:
    """The model runs in Serve; a consumer that loaded torch would pay ~1 s and ~300 MiB for
    nothing."""
    loaded = _imported(module)
    assert module in loaded
    assert "torch" not in loaded


def test_a_service_never_imports_another_service() -> None:
    """Services talk through Kafka, S3, PostgreSQL or Serve handles; the only shared module is
    the private process scaffolding ``_runtime``."""
    names = {p.stem for p in SERVICES.glob("*.py")} - {"__init__", "_runtime"}
    assert {"planner", "worker", "reconciler", "inference"} <= names
    crossings = []
    for path in SERVICES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                parts = target.split(".")
                if parts[:2] == ["skyeye", "services"] and len(parts) > 2 and parts[2] in names:
                    crossings.append(f"{path.name} imports {target}")
    assert crossings == []
