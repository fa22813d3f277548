"""The Dockerfiles, checked without a Docker engine (none here): hadolint, COPY sources, pins.

What is not checked here: that the images build and run. That needs `docker build` in CI
elsewhere (docs/deploy.md says so).
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, VENV_BIN

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
OCI_LABELS = {"title", "description", "source", "licenses", "version", "revision"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def context_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, f"{pattern}/*"):
            excluded = not negate
    return excluded


def test_there_are_two_images() -> None:
    assert [d.name for d in DOCKERFILES] == ["ray.Dockerfile", "services.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    done = subprocess.run(
        [str(VENV_BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_every_copy_source_exists_in_the_context(dockerfile: Path) -> None:
    copies = [args for keyword, args in instructions(dockerfile) if keyword == "COPY"]
    assert copies
    for args in copies:
        words = args.split()
        if any(w.startswith("--from=") for w in words):
            continue  # from an earlier stage, not the context
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            assert not context_excludes(source), f"{source} is left out by .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_multi_stage_non_root_labelled(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert sum(k == "FROM" for k, _ in steps) >= 2
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) > 0
    labels = set(re.findall(r"org\.opencontainers\.image\.(\w+)=", dockerfile.read_text()))
    assert labels >= OCI_LABELS


def test_pins_match_constraints() -> None:
    constraints = (ROOT / "constraints.txt").read_text()
    torch = re.search(r"^torch==(\S+)$", constraints, re.M)
    assert torch is not None
    for dockerfile in DOCKERFILES:
        assert f"torch=={torch.group(1)}" in dockerfile.read_text(), dockerfile.name
        assert "-c constraints.txt" in dockerfile.read_text() or (
            "-c /home/ray/constraints.txt" in dockerfile.read_text()
        )


def test_dashboard_build_writes_where_the_image_copies_from() -> None:
    build = (ROOT / "web" / "build.mjs").read_text()
    assert '"services", "api", "dashboard_static"' in build
    text = (ROOT / "docker" / "services.Dockerfile").read_text()
    assert "COPY --from=dashboard /src/services/api/dashboard_static" in text
