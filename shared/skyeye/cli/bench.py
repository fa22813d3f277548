"""``skyeye bench [--quick] [--json]``: what the pipeline costs against the bare model.

One run on one model (default: the packaged skyeye-tiny), on generated images, with its own
embedded stack in a scratch folder (a user's stack is never touched): the figures and how to
rerun each are in bench/README.md. Progress goes to stderr while it runs (minutes; ``--quick``
about two on a 2-core machine); the table, or with ``--json`` one JSON object, to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skyeye.benchmark import PHASES, report
from skyeye.cli.output import table
from skyeye.settings import Settings

__all__ = ["add_parser", "cmd_bench"]


def _phases(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PHASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"expected phases among {', '.join(PHASES)}, got {text!r}")
    return chosen


def add_parser(commands: Any) -> None:
    """Add ``bench`` to the CLI."""
    p = commands.add_parser(
        "bench",
        help="measure the pipeline against the bare model (starts its own stack; minutes)",
        description="Raw model vs pipeline tiles/s, encoder calls per tile, encoder and decoder "
        "rates, latency at three loads, autoscaling and worker scaling, planner tiling: one run, "
        "one model, generated images, on a stack of its own (bench/README.md).",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer images and shorter waits (about two minutes)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--only",
        type=_phases,
        metavar="PHASE[,PHASE]",
        help=f"run only these phases: {', '.join(PHASES)} (latency implies the pipeline "
        "run, whose throughput sets its loads)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        help="a saved SkyEye model folder (default: $SKYEYE_MODEL_DIR, else skyeye-tiny)",
    )
    p.set_defaults(func=cmd_bench)


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def render(figures: dict[str, Any]) -> str:
    """The report as a table (and the burst's replica timeline, when measured)."""
    text = [report.heading(figures), ""]
    text.append(table(report.rows(figures), ["figure", "value", "conditions"]))
    if "autoscaling" in figures:
        header, rows = report.timeline_rows(figures)
        text += ["", "replicas during the burst (seconds from its first upload)"]
        text.append(table(rows, header))
    text += ["", f"{figures['wall_s']:.0f} s in all"]
    return "\n".join(text)


def cmd_bench(args: argparse.Namespace) -> int:
    """``skyeye bench``: run the phases, print the table or the JSON."""
    # torch and the model load with the runner: no other command pays for them
    from skyeye.benchmark import runner
    from skyeye.model.checkpoint import CheckpointError, read_manifest

    base = Settings()
    if args.model_dir is not None:
        base = base.model_copy(update={"model_dir": args.model_dir})
    try:
        # before anything is written or started: a wrong folder is one line, at once
        read_manifest(base.resolved_model_dir)
    except CheckpointError as exc:
        _say(f"error: {exc} (give --model-dir a model folder)")
        return 2
    plan = runner.QUICK if args.quick else runner.FULL
    figures = runner.run(base, plan, args.only or PHASES, _say)
    print(json.dumps(figures) if args.json else render(figures))
    return 0
