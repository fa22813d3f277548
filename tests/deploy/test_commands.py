"""Every command the images, the chart and the compose file run is a real command here.

Each runs with ``--help`` in the project venv (the services take no other argument: their
settings are SKYEYE_* variables) and must print its usage. MinIO's ``mc`` commands run in
MinIO's own image and cannot run here; test_chart.py checks their text.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml

from .conftest import ROOT, VENV_BIN, production_values, render

SERVICES_IMAGE = "skyeye-services"
RAY_IMAGE = "skyeye-ray"


def chart_commands() -> set[tuple[str, ...]]:
    commands = set()
    for manifests in (render(), render(production_values())):
        for manifest in manifests:
            if manifest["kind"] not in ("Deployment", "Job"):
                continue
            for container in manifest["spec"]["template"]["spec"]["containers"]:
                if SERVICES_IMAGE in container["image"] or RAY_IMAGE in container["image"]:
                    commands.add(tuple(container["command"]))
    return commands


def compose_commands() -> set[tuple[str, ...]]:
    compose = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    return {
        tuple(service["command"])
        for service in compose["services"].values()
        if service["image"].startswith((SERVICES_IMAGE, RAY_IMAGE))
    }


def image_commands() -> set[tuple[str, ...]]:
    commands = set()
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        for match in re.finditer(r"^(?:CMD|ENTRYPOINT) (\[.*\])$", dockerfile.read_text(), re.M):
            commands.add(tuple(json.loads(match.group(1))))
    return commands


ALL_COMMANDS = sorted(chart_commands() | compose_commands() | image_commands())


def help_of(command: tuple[str, ...]) -> list[str]:
    """``command``'s --help, run with the venv's programs."""
    program, *words = command
    if program == "python":
        # the module is the command; nothing after it
        return [str(VENV_BIN / "python"), *words[:2], "--help"]
    # subcommands up to the first option or file argument, then --help
    subcommands = [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)]
    return [str(VENV_BIN / program), *subcommands[:2], "--help"]


def test_commands_are_collected() -> None:
    names = {c[2] for c in ALL_COMMANDS if c[:2] == ("python", "-m")}
    assert {f"skyeye.services.{s}" for s in ("planner", "worker", "relay", "webhooks")} <= names
    assert ("skyeye", "db", "migrate") in ALL_COMMANDS


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_command_is_real(command: tuple[str, ...]) -> None:
    done: Any = subprocess.run(
        help_of(command), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"[-2000:]
    assert done.stdout.lower().startswith("usage: "), done.stdout[:500]
