"""The tree's rules, checked: the runtime never loads the demo model's lab, consumers never load
torch, a service never imports another service, and each external system's client library is
imported only by its adapter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
PACKAGE = ROOT / "shared" / "skyeye"


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
        "skyeye.services.relay",
        "skyeye.services.webhooks",
        "skyeye.services.api",
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
    "module",
    [
        "skyeye.services.worker",
        "skyeye.services.planner",
        "skyeye.services.reconciler",
        "skyeye.services.relay",
        "skyeye.services.webhooks",
    ],
)
def test_consumers_never_load_torch(module: str) -> None:
    """The model runs in Serve; a consumer that loaded torch would pay ~1 s and ~300 MiB for
    nothing."""
    loaded = _imported(module)
    assert module in loaded
    assert "torch" not in loaded


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Each import statement's line and the modules it names (``from a import b``: ``a`` and
    ``a.b``; a relative import keeps its dots: ``from .planner import x`` is ``.planner``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base.rstrip('.')}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def test_a_service_never_imports_another_service() -> None:
    """Services talk through Kafka, S3, PostgreSQL or Serve handles; the only shared modules are
    the private process scaffolding (``_runtime``, ``_observability``)."""
    names = {p.stem for p in SERVICES.glob("*.py") if not p.stem.startswith("_")}
    assert {"planner", "worker", "reconciler", "inference"} <= names
    crossings = []
    for path in SERVICES.glob("*.py"):
        for _, target in _imports(ast.parse(path.read_text())):
            parts = target.lstrip(".").split(".")
            if target.startswith("."):  # relative: a sibling in services/
                parts = ["skyeye", "services", *parts]
            if parts[:2] == ["skyeye", "services"] and len(parts) > 2 and parts[2] in names:
                crossings.append(f"{path.name} imports {target}")
    assert crossings == []


# The client libraries of the external systems (S3, Kafka, PostgreSQL, Ray, webhook receivers)
# and their HTTP libraries: each system is reached through its adapter in skyeye/adapters.
VENDOR_CLIENTS = {
    "minio",
    "kafka",
    "psycopg2",
    "sqlalchemy",
    "ray",
    "urllib3",
    "httpx",
    "standardwebhooks",
}
# Beyond the adapters, who may import which of them, and why.
VENDOR_EXCEPTIONS = {
    # the Serve application itself: Serve runs it, its deployments are written with ray.serve
    "services/inference.py": {"ray"},
    # every SQL statement of the product, written with SQLAlchemy: the pipeline's, search's,
    # the API tokens' and the alerts'
    "shared/skyeye/catalog/queries.py": {"sqlalchemy"},
    "shared/skyeye/catalog/search.py": {"sqlalchemy"},
    "shared/skyeye/catalog/tokens.py": {"sqlalchemy"},
    "shared/skyeye/catalog/delivery.py": {"sqlalchemy"},
    "shared/skyeye/catalog/alerts.py": {"sqlalchemy"},
    "shared/skyeye/catalog/events.py": {"sqlalchemy"},
    # a catalog of realistic size for the search benchmark and plan tests, bulk-written in SQL
    "shared/skyeye/catalog/synthetic.py": {"sqlalchemy"},
}


def _vendor_imports(relative: str, source: str) -> list[str]:
    """Where the module at ``relative`` (from the repository root) imports a vendor client it
    may not, one ``path:line: package`` each."""
    if relative.startswith("shared/skyeye/adapters/"):
        return []
    forbidden = VENDOR_CLIENTS - VENDOR_EXCEPTIONS.get(relative, set())
    found = {
        (line, module.split(".")[0])
        for line, module in _imports(ast.parse(source, relative))
        if module.split(".")[0] in forbidden
    }
    return [f"{relative}:{line}: {package}" for line, package in sorted(found)]


def test_only_the_adapters_import_the_external_systems_clients() -> None:
    """A module outside skyeye/adapters names the project's types (``s3.ObjectStoreRefused``,
    ``kafka.Record``, ``postgres.Engine``, ...), never the client's."""
    modules = {
        path.relative_to(ROOT).as_posix(): path
        for path in [*PACKAGE.rglob("*.py"), *SERVICES.rglob("*.py")]
    }
    # the walk sees the tree: the adapters, the exceptions and the modules that use them
    assert set(VENDOR_EXCEPTIONS) | {"services/worker.py", "shared/skyeye/adapters/s3.py"} <= set(
        modules
    )
    found = [v for name, path in modules.items() for v in _vendor_imports(name, path.read_text())]
    assert found == []


@pytest.mark.parametrize(
    ("relative", "source", "found"),
    [
        ("services/worker.py", "from minio.error import S3Error", ["minio"]),
        ("shared/skyeye/cli/main.py", "import sqlalchemy as sa", ["sqlalchemy"]),
        ("services/_runtime.py", "from kafka import KafkaProducer", ["kafka"]),
        ("shared/skyeye/stack/x.py", "def f():\n    import urllib3.exceptions", ["urllib3"]),
        ("services/planner.py", "import psycopg2", ["psycopg2"]),
        # an exception covers its own library only
        ("services/inference.py", "from ray import serve", []),
        ("services/inference.py", "from kafka import KafkaProducer", ["kafka"]),
        ("shared/skyeye/catalog/queries.py", "from minio import Minio", ["minio"]),
        ("shared/skyeye/adapters/s3.py", "from minio import Minio", []),
        # our own modules of the same names are no vendor imports
        ("services/worker.py", "from skyeye.adapters import kafka, s3", []),
        ("services/worker.py", "from .kafka import x", []),
    ],
)
def test_the_vendor_import_check_finds_what_it_should(
    relative: str, source: str, found: list[str]
) -> None:
    """The check above on a line of source written here, as if it were in ``relative``."""
    assert [v.split(": ", 1)[1] for v in _vendor_imports(relative, source + "\n")] == found
