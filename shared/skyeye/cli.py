"""``skyeye``: run the embedded stack, ingest imagery, read results and status."""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from skyeye import catalog, samples, stac, telemetry
from skyeye.adapters import kafka, postgres
from skyeye.arguments import bounded, count, non_negative_int
from skyeye.evaluation import evaluate
from skyeye.ingest import ingest, wait_for
from skyeye.model import inspect as model_inspect
from skyeye.pipeline import launch
from skyeye.settings import Settings
from skyeye.stack import StackError, StackNotRunning, read_state, resolve


def _say(message: str) -> None:
    print(f"[skyeye] {message}", file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(home=args.home) if args.home else Settings()


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    started = time.monotonic()
    stack = launch(settings, progress=_say)
    _say(f"stack up in {time.monotonic() - started:.1f} s; state in {settings.home}")
    _say("ingest with `skyeye ingest FILE...` in another shell; Ctrl-C stops everything")
    stack.run_forever()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"skyeye ingest: not a file: {', '.join(missing)}")
    settings = resolve(_settings(args))
    telemetry.setup("skyeye-ingest", settings.home)
    done = ingest(settings, paths, prefix=args.prefix, metadata=dict(args.meta))
    for item in done:
        if not args.json:
            print(f"{item.key}\t{item.asset_id}")
    states: dict[uuid.UUID, str] = {}
    if args.wait:
        assert settings.database_url is not None
        engine = postgres.create_engine(settings.database_url)
        ids = [d.asset_id for d in done]

        def progress(current: dict[uuid.UUID, str]) -> None:
            finished = sum(s in catalog.TERMINAL_ASSET_STATES for s in current.values())
            _say(f"{finished}/{len(ids)} asset(s) finished")

        states = wait_for(engine, ids, timeout_s=args.timeout, progress=progress)
    if args.json:
        print(
            _dump(
                [
                    {"path": str(d.path), "key": d.key, "asset_id": str(d.asset_id)}
                    | ({"status": states[d.asset_id]} if args.wait else {})
                    for d in done
                ]
            )
        )
    return 1 if any(s == "error" for s in states.values()) else 0


def _print_results(settings: Settings, asset_id: uuid.UUID | None, as_json: bool) -> None:
    assert settings.database_url is not None
    engine = postgres.create_engine(settings.database_url)
    with engine.connect() as conn:
        assets = catalog.assets(conn, asset_id)
        results = catalog.results(conn, asset_id)
        errors = catalog.errors(conn, asset_id)
    if as_json:
        print(_dump({"assets": assets, "results": results, "errors": errors}))
        return
    for asset in assets:
        size = f"{asset['width']}x{asset['height']}" if asset["width"] else "?"
        if asset["duration_s"] is not None:
            size += f", {asset['duration_s']:.1f} s"
        print(f"\n{asset['object_key']}  [{asset['asset_id']}]  {size} {asset['status']}")
        if asset["preview_key"]:
            print(f"  preview: s3://{settings.derived_bucket}/{asset['preview_key']}")
        rows = []
        for r in (r for r in results if r["asset_id"] == asset["asset_id"]):
            answer = r["raw_text"] if r["parsed"] else f"(unparsed) {r['raw_text']}"
            if r["detections"]:
                answer = "; ".join(
                    f"{d['label']} ({d['x1']:.0f},{d['y1']:.0f})-({d['x2']:.0f},{d['y2']:.0f})"
                    for d in r["detections"]
                )
            # frames are told by their time; scene- and clip-level results by their item's kind
            if r["item_kind"] == "frame":
                where = f"{r['frame_time_s']:.2f} s"
            elif r["item_kind"] == "tile":
                where = r["tile_index"]
            else:
                where = r["item_kind"]
            rows.append((where, r["task_kind"], _short(r["task_text"], 36), _short(answer)))
        if rows:
            print(_table(rows, ("tile/frame", "task", "asked", "answer")))
        for e in (e for e in errors if e["asset_id"] == asset["asset_id"]):
            print(f"  error ({e['stage']}/{e['kind']}): {e['message']}")
    unattached = [e for e in errors if e["asset_id"] is None]
    if unattached and asset_id is None:
        print("\nerrors not tied to an asset:")
        for e in unattached:
            print(f"  {e['source']} ({e['stage']}/{e['kind']}): {_short(e['message'], 100)}")


def cmd_results(args: argparse.Namespace) -> int:
    settings = resolve(_settings(args))
    _print_results(settings, args.asset, args.json)
    return 0


def _asset_and_detections(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    settings = resolve(_settings(args))
    assert settings.database_url is not None
    with postgres.create_engine(settings.database_url).connect() as conn:
        asset = catalog.stac_asset(conn, args.asset)
        detections = catalog.asset_detections(conn, args.asset)
    if asset is None:
        raise SystemExit(f"skyeye {args.command}: no asset {args.asset} in the catalog")
    return asset, detections


def cmd_stac(args: argparse.Namespace) -> int:
    asset, detections = _asset_and_detections(args)
    derived = _settings(args).derived_bucket
    print(_dump(stac.item(asset, detections, args.labels_href, preview_bucket=derived)))
    return 0


def cmd_detections(args: argparse.Namespace) -> int:
    asset, detections = _asset_and_detections(args)
    if args.geojson:
        print(_dump(stac.detections_collection(detections)))
        return 0
    size = f"{asset['width']}x{asset['height']}" if asset["width"] else "?"
    print(f"{asset['object_key']}  [{asset['asset_id']}]  {size} {asset['status']}")
    rows = [
        (
            d["detection_id"],
            d["tile_index"],
            d["task_kind"],
            _short(d["label"], 30),
            "({:.0f},{:.0f})-({:.0f},{:.0f})".format(d["x1"], d["y1"], d["x2"], d["y2"]),
            _lon_lat_centre(d["lon_lat_bounds"]),
            "yes" if d["duplicate"] else "",
        )
        for d in detections
    ]
    header = ("id", "tile", "task", "label", "pixel box", "lon, lat (centre)", "duplicate")
    print(_table(rows, header) if rows else "no detections")
    return 0


def _lon_lat_centre(bounds: Sequence[float] | None) -> str:
    if bounds is None:
        return "-"
    west, south, east, north = bounds
    return f"{(west + east) / 2:.6f}, {(south + north) / 2:.6f}"


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    state = read_state(settings.home)
    report: dict[str, Any] = {
        "home": str(settings.home),
        "running": bool(state and state.supervisor_alive),
    }
    if state is not None:
        report["components"] = [c.model_dump(mode="json") for c in state.components]
    if report["running"]:
        resolved = resolve(settings)
        assert resolved.database_url is not None
        with postgres.create_engine(resolved.database_url).connect() as conn:
            report["counts"] = catalog.counts(conn)
        report["lag"] = {
            "planner": kafka.lag(resolved, resolved.topic_events, resolved.planner_group),
            "worker": kafka.lag(resolved, resolved.topic_work, resolved.worker_group),
        }
    if args.json:
        print(_dump(report))
        return 0 if report["running"] else 3
    print(f"state folder: {report['home']}")
    if not report["running"]:
        print("stack: not running (start it with `skyeye up`)")
        return 3
    rows = [
        (
            c["name"],
            c.get("pid") or "-",
            c.get("endpoint") or "-",
            "up" if c.get("alive") else "DOWN",
        )
        for c in report["components"]
    ]
    print(_table(rows, ("component", "pid", "endpoint", "state")))
    print("\n" + _table(sorted(report["counts"].items()), ("count", "value")))
    print("\n" + _table(sorted(report["lag"].items()), ("consumer", "lag")))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    started = time.monotonic()
    stack = launch(settings, progress=_say)
    try:
        _say(f"stack up in {time.monotonic() - started:.1f} s")
        generated = settings.home / "samples"
        files = [
            *samples.aerial_photos(),
            samples.write_world_scene(generated / "demo-world-lake.png"),
            samples.write_geotiff(generated / "demo-scene-utm33n.tif"),
            samples.write_clip(generated / "demo-clip.mp4", cut_at=2.0),
        ]
        resolved = resolve(settings)
        telemetry.setup("skyeye-ingest", settings.home)
        t0 = time.monotonic()
        done = ingest(resolved, files, prefix="demo")
        _say(f"ingested {len(done)} file(s); waiting for results")
        assert resolved.database_url is not None
        engine = postgres.create_engine(resolved.database_url)

        def progress(current: dict[uuid.UUID, str]) -> None:
            finished = sum(s in catalog.TERMINAL_ASSET_STATES for s in current.values())
            _say(f"{finished}/{len(done)} asset(s) finished ({time.monotonic() - t0:.1f} s)")

        wait_for(engine, [d.asset_id for d in done], timeout_s=args.timeout, progress=progress)
        _say(f"all assets finished in {time.monotonic() - t0:.1f} s")
        _print_results(resolved, None, as_json=False)
    finally:
        _say("stopping the stack")
        stack.stop()
    _say(f"demo finished in {time.monotonic() - started:.1f} s")
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the same orderly teardown path as Ctrl-C
    raise KeyboardInterrupt


Command = Callable[[argparse.Namespace], int]


def _reads_model_folders(hint: str) -> Callable[[Command], Command]:
    """For commands that load a model folder in-process: one that is not a model folder is a
    clear error (exit 2) with ``hint``, not a traceback."""

    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            # Lazy so that commands which never touch a model do not load torch.
            from skyeye.model import CheckpointError

            try:
                return command(args)
            except CheckpointError as exc:
                _say(f"error: {exc} ({hint})")
                return 2

        return run

    return wrap


@_reads_model_folders("set SKYEYE_MODEL_DIR to a model folder")
def cmd_model_eval(args: argparse.Namespace) -> int:
    settings = _settings(args)
    model_dir = settings.resolved_model_dir
    _say(f"evaluating {model_dir} on {args.scenes} held-out scenes (seed {args.seed})")
    report = evaluate(model_dir, args.scenes, args.seed, args.batch, args.difficulty)
    print(report.model_dump_json(indent=2) if args.json else report.table())
    return 0


@_reads_model_folders("--init and --tower take a folder written by skyeye model train")
def cmd_model_train(args: argparse.Namespace) -> int:
    # torch and the training loop load only for this command
    from skyeye.training import Stages, train

    kind_weights = dict(Stages().kind_weights)
    for kind, weight in args.kind_weight or []:
        if kind not in kind_weights:
            raise SystemExit(
                f"skyeye model train: no question kind {kind!r} (kinds: {', '.join(kind_weights)})"
            )
        try:
            kind_weights[kind] = float(weight)
        except ValueError:
            raise SystemExit(f"skyeye model train: {kind}={weight}: not a number") from None
        if not kind_weights[kind] >= 0:
            raise SystemExit(
                f"skyeye model train: --kind-weight {kind}: must be >= 0, got {weight}"
            )
    sigma = Stages().number_sigma if args.number_sigma is None else args.number_sigma
    stages = Stages(
        pretrain_steps=args.pretrain_steps,
        instruct_steps=args.instruct_steps,
        kind_weights=kind_weights,
        number_sigma=sigma,
        eval_scenes=args.eval_scenes,
    )
    _say(f"training skyeye-tiny (seed {args.seed}, {args.minutes:g} min budget) into {args.out}")
    report = train(
        args.out,
        seed=args.seed,
        minutes=args.minutes,
        stages=stages,
        threads=args.threads,
        device=args.device,
        workers=args.workers,
        tower=args.tower,
        init=args.init,
    )
    _say(
        f"trained in {report.seconds / 60:.1f} min: {report.pretrain_steps} pretraining and "
        f"{report.instruct_steps} instruction steps; use it with SKYEYE_MODEL_DIR={args.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skyeye",
        description="Watch Earth-observation imagery streams with a vision-language model.",
        epilog="Settings come from SKYEYE_* environment variables (see README).",
    )
    parser.add_argument(
        "--home", type=Path, help="state folder of the embedded stack (default: $SKYEYE_HOME)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start the embedded stack and the pipeline; Ctrl-C stops it")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("ingest", help="upload files and announce them to the pipeline")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files to ingest")
    p.add_argument("--prefix", default="uploads", help="object key prefix (default: uploads)")
    p.add_argument(
        "--meta",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="user metadata stored with every object (repeatable), e.g. --meta sensor=uav-3",
    )
    p.add_argument("--wait", action="store_true", help="return when every file is processed")
    p.add_argument(
        "--timeout",
        type=bounded(float, 0),
        default=600.0,
        help="seconds --wait waits (default 600)",
    )
    p.add_argument("--json", action="store_true", help="print key and asset id per file as JSON")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("results", help="print stored results (and errors)")
    p.add_argument("--asset", type=uuid.UUID, help="only this asset id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser(
        "stac", help="print an asset's STAC 1.1 Item (label and projection extensions)"
    )
    p.add_argument("asset", type=uuid.UUID, metavar="ASSET_ID")
    p.add_argument(
        "--labels-href",
        metavar="HREF",
        help="where the Item says its detections GeoJSON is"
        " (default: ./ASSET_ID-detections.geojson, beside the Item)",
    )
    p.set_defaults(func=cmd_stac)

    p = sub.add_parser("detections", help="print an asset's detections: a table, or GeoJSON")
    p.add_argument("asset", type=uuid.UUID, metavar="ASSET_ID")
    p.add_argument(
        "--geojson",
        action="store_true",
        help="a GeoJSON FeatureCollection following the STAC label extension",
    )
    p.set_defaults(func=cmd_detections)

    p = sub.add_parser("status", help="components, pids, ports, topic lag, counts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("demo", help="start, ingest the sample images, print results, stop")
    p.add_argument(
        "--timeout",
        type=bounded(float, 0),
        default=600.0,
        help="seconds to wait for results (default 600)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("model", help="check the published weights; evaluate or train a model")
    model_commands = p.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    model_inspect.add_parser(model_commands)
    p = model_commands.add_parser(
        "eval",
        help="score the configured model on generated held-out scenes (grounding, VQA, BLEU-4)",
        description="Score the configured model (SKYEYE_MODEL_DIR, default: the packaged "
        "skyeye-tiny) on scenes of the procedural aerial world rendered from an evaluation "
        "seed that training never draws: grounding Acc@IoU 0.5, detection F1, VQA and scene "
        "accuracy, caption BLEU-4, each beside a constant-answer baseline.",
    )
    p.add_argument(
        "--scenes", type=count, default=20, help="held-out scenes to generate (default 20)"
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="evaluation seed, never used in training (default 0)",
    )
    p.add_argument(
        "--batch", type=count, default=16, help="images encoded per forward pass (default 16)"
    )
    p.add_argument(
        "--difficulty",
        type=bounded(float, 0, 1),
        help="fixed difficulty in [0, 1], from few large objects to many small ones "
        "(default: spread over 0-1)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_model_eval)
    p = model_commands.add_parser(
        "train",
        help="train skyeye-tiny on the procedural aerial world, from scratch or further from "
        "an earlier run (reproducible)",
        description="Train skyeye-tiny: stage 1 pretrains the vision tower on per-patch classes "
        "and coordinates, "
        "stage 2 tunes ln_vision, projector and decoder on instructions. A time budget sizes "
        "the step counts; the log (training.json beside the weights) records them, and passing "
        "them back with --pretrain-steps/--instruct-steps repeats the run exactly (same device "
        "and --threads). The commands that made the packaged model, each run from the one "
        "before: README.md, section 'The model' (its training.json logs them too).",
    )
    p.add_argument("--out", type=Path, required=True, help="model folder to write (replaced)")
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of every random draw (default 0)"
    )
    p.add_argument(
        "--minutes",
        type=bounded(float, 0),
        default=52.0,
        help="time budget of both stages (default 52)",
    )
    p.add_argument(
        "--pretrain-steps", type=non_negative_int, help="fix stage 1's steps (default: by time)"
    )
    p.add_argument(
        "--instruct-steps", type=non_negative_int, help="fix stage 2's steps (default: by time)"
    )
    p.add_argument("--threads", type=count, default=2, help="torch threads (default 2)")
    p.add_argument(
        "--device", default="cpu", help="where the model trains, e.g. cuda (default cpu)"
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="processes rendering and preprocessing the training scenes (0: in the training "
        "process; use several on a GPU, where the model's step is fast)",
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--tower",
        type=Path,
        help="start from the vision tower of this earlier run's folder instead of stage 1 "
        "(for example a run with --instruct-steps 0 on a GPU); with --pretrain-steps, stage 1 "
        "goes on from it",
    )
    start.add_argument(
        "--init",
        type=Path,
        help="train stage 2 further from every weight of this earlier run's folder (fresh "
        "optimiser and schedule, no curriculum)",
    )
    p.add_argument(
        "--kind-weight",
        type=_key_value,
        action="append",
        metavar="KIND=W",
        help="stage 2's relative weight of one question kind (refer, detection, presence, "
        "count, scene or caption), repeatable; the kinds not given keep the recipe's "
        "(skyeye.training.Stages.kind_weights)",
    )
    p.add_argument(
        "--number-sigma",
        type=bounded(float, 0),
        metavar="S",
        help="stage 2 scores box numbers against a Gaussian of this width on the 0-100 scale, "
        "so a near miss costs less than a far one (0: exact targets; default: the recipe's, "
        "skyeye.training.Stages.number_sigma)",
    )
    p.add_argument(
        "--eval-scenes",
        type=non_negative_int,
        default=20,
        help="held-out scenes scored at the end (0: none; default 20)",
    )
    p.set_defaults(func=cmd_model_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except (StackError, StackNotRunning, TimeoutError) as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
