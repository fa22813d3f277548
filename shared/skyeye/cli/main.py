"""``skyeye``: run the embedded stack, ingest imagery, read results and status."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from skyeye import catalog, samples, telemetry
from skyeye.adapters import kafka, postgres, s3, serve
from skyeye.adapters.postgres import Engine
from skyeye.catalog import stac
from skyeye.cli import bench, dlq, model_inspect, rules, tokens
from skyeye.cli import search as search_cli
from skyeye.cli.arguments import bounded, count, non_negative_int
from skyeye.cli.ingest import (
    CatalogUnavailable,
    Ingested,
    IngestFailed,
    InputRefused,
    WaitTimeout,
    check_inputs,
    ingest,
    object_key,
    printable,
    wait_for,
)
from skyeye.cli.output import table
from skyeye.imagery import clips
from skyeye.settings import Settings, invalid_settings
from skyeye.stack import (
    ComponentState,
    StackError,
    StackNotRunning,
    StackState,
    read_state,
    resolve,
)
from skyeye.stack.launcher import launch

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A command-line mistake that shows only once the catalog is read: one line and exit 2.

    For example an asset id the catalog does not hold; reported like the mistakes argparse finds.
    """


def _say(message: str) -> None:
    print(f"[skyeye] {message}", file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(home=args.home) if args.home else Settings()


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, default=catalog.jsonable)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_up(args: argparse.Namespace) -> int:
    """``skyeye up``: start the embedded stack and the pipeline, and run until Ctrl-C."""
    settings = _settings(args)
    started = time.monotonic()
    stack = launch(settings, progress=_say)
    _say(f"stack up in {time.monotonic() - started:.1f} s; state in {settings.home}")
    api = next((c.endpoint for c in stack.state().components if c.name == "api"), None)
    _say(f"results API at {api} (a token for it: `skyeye token create --scope read`)")
    _say("ingest with `skyeye ingest FILE...` in another shell; Ctrl-C stops everything")
    stack.run_forever()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """``skyeye ingest``: upload the files, announce them, and with --wait await their results."""
    paths = [Path(p) for p in args.paths]
    outcomes = [_Outcome(path, object_key(path, args.prefix)) for path in paths]
    try:
        # before connecting: a mistake is reported even without a stack, and nothing is uploaded
        check_inputs(paths, args.prefix)
        settings = resolve(_settings(args))
        telemetry.setup("skyeye-ingest", settings.home)
        done = ingest(settings, paths, prefix=args.prefix, metadata=dict(args.meta))
    except InputRefused as refused:
        for line in refused.lines():
            _say(f"error: {line}")
        _say("nothing was uploaded")
        for outcome, problem in zip(outcomes, refused.problems, strict=True):
            outcome.status = "refused" if problem or refused.prefix_problem else "not_uploaded"
            outcome.error = problem or refused.prefix_problem or "another input was refused"
        return _report_ingest(args, outcomes, 2)
    except (IngestFailed, StackNotRunning) as failed:
        _say(f"error: {failed}")
        _uploaded(outcomes, getattr(failed, "done", []), args.json)
        for outcome in outcomes:
            if outcome.status is None:
                outcome.status, outcome.error = "not_uploaded", str(failed)
        return _report_ingest(args, outcomes, 2)
    _uploaded(outcomes, done, args.json)
    if not args.wait:
        return _report_ingest(args, outcomes, 0)
    code = _await_assets(args, settings, [d.asset_id for d in done], outcomes)
    return _report_ingest(args, outcomes, code)


def _await_assets(
    args: argparse.Namespace, settings: Settings, ids: list[uuid.UUID], outcomes: list[_Outcome]
) -> int:
    """``--wait``: wait for the uploaded assets to finish and record how each ended.

    Returns the exit status: 2 when the wait timed out or the catalog became unreadable, 1 when
    an asset failed, else 0.
    """
    assert settings.database_url is not None
    engine = postgres.create_engine(settings.database_url)

    def progress(current: dict[uuid.UUID, str]) -> None:
        finished = sum(s in catalog.TERMINAL_ASSET_STATES for s in current.values())
        _say(f"{finished}/{len(ids)} asset(s) finished")

    # an asset not finished is "timeout" (or "unknown" with the database gone) and says why
    code, unfinished, why = 0, "timeout", f"not finished within --timeout {args.timeout:g} s"
    try:
        states = wait_for(engine, ids, timeout_s=args.timeout, progress=progress, notice=_say)
    except WaitTimeout as exc:
        _say(f"error: {exc}")
        states, code = exc.states, 2
    except CatalogUnavailable as exc:
        _say(f"error: {exc}")
        states, code, unfinished, why = exc.states, 2, "unknown", str(exc)
    finished = [a for a in ids if states.get(a) in catalog.TERMINAL_ASSET_STATES]
    errors = _asset_errors(engine, finished) if unfinished == "timeout" else None
    for outcome in outcomes:
        if outcome.asset_id is None:
            continue
        asset_errors = None if errors is None else errors.get(outcome.asset_id, [])
        outcome.settle(states.get(outcome.asset_id), asset_errors, unfinished, why)
        if outcome.status == "error" and not args.json:
            _say(f"error: {outcome.key}: {outcome.error}")
    if code == 0 and any(o.status == "error" for o in outcomes):
        code = 1
    return code


@dataclass
class _Outcome:
    """What became of one input of ``skyeye ingest``: one JSON object of ``--json``."""

    path: Path
    key: str
    asset_id: uuid.UUID | None = None
    status: str | None = None
    error: str | None = None
    errors: list[dict[str, Any]] | None = None  # the asset's error rows; None: not read

    def settle(
        self,
        state: str | None,
        errors: list[dict[str, Any]] | None,
        unfinished: str,
        why: str,
    ) -> None:
        """Record how the asset ended after ``--wait``: its final state and error rows.

        An asset in no final state gets the status ``unfinished`` and ``why`` as its error.
        """
        self.errors = errors
        if state not in catalog.TERMINAL_ASSET_STATES:
            self.status = unfinished
            self.error = f"{why} (state: {state or 'not in the catalog yet'})"
            return
        self.status = state
        if state == "error":
            reasons = "; ".join(f"{e['kind']}: {e['message']}" for e in self.errors or [])
            self.error = reasons or "failed (no error row could be read)"

    def as_json(self, waited: bool) -> dict[str, Any]:
        """This outcome as one object of ``--json``; ``waited``: with the asset's error rows."""
        row: dict[str, Any] = {
            "path": printable(str(self.path)),
            "key": printable(self.key),
            "asset_id": None if self.asset_id is None else str(self.asset_id),
            "status": self.status,
            "error": self.error,
        }
        if waited:  # None: the catalog could not be read
            row["errors"] = (
                None
                if self.errors is None
                else [{k: e[k] for k in ("stage", "kind", "message")} for e in self.errors]
            )
        return row


def _uploaded(outcomes: list[_Outcome], done: list[Ingested], as_json: bool) -> None:
    """Fill in the uploaded files (``done`` follows the inputs, sidecars left out)."""
    uploaded = iter(done)
    for outcome in outcomes:
        if clips.is_sidecar(outcome.path.name):
            outcome.status = "skipped"  # it travels with its clip
            continue
        item = next(uploaded, None)
        if item is None:
            break
        outcome.asset_id, outcome.status = item.asset_id, "uploaded"
        if not as_json:
            print(f"{item.key}\t{item.asset_id}")


def _asset_errors(
    engine: Engine, asset_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]] | None:
    """Each asset's error rows; None, said in one line, when the database is gone again."""
    if not asset_ids:
        return {}
    try:
        with postgres.connection(engine) as conn:
            return {a: catalog.errors(conn, a) for a in asset_ids}
    except postgres.DatabaseError as exc:
        reason = exc.reason
        if reason is None:
            raise
        _say(f"error: {reason}; the assets' error rows cannot be read")
        return None


def _report_ingest(args: argparse.Namespace, outcomes: list[_Outcome], code: int) -> int:
    if args.json:
        print(_dump([o.as_json(waited=args.wait) for o in outcomes]))
    return code


def _print_results(settings: Settings, asset_id: uuid.UUID | None, as_json: bool) -> None:
    """Print the catalog's assets (or the one ``asset_id``) with their results and errors."""
    assert settings.database_url is not None
    engine = postgres.create_engine(settings.database_url)
    with engine.connect() as conn:
        assets = catalog.assets(conn, asset_id)
        results = catalog.results(conn, asset_id)
        errors = catalog.errors(conn, asset_id)
    if asset_id is not None and not assets:
        raise UsageError(f"no asset {asset_id} in the catalog (`skyeye results` lists them all)")
    if as_json:
        print(_dump({"assets": assets, "results": results, "errors": errors}))
        return
    for asset in assets:
        _print_asset(settings, asset, results, errors)
    unattached = [e for e in errors if e["asset_id"] is None]
    if unattached and asset_id is None:
        print("\nerrors not tied to an asset:")
        for e in unattached:
            print(f"  {e['source']} ({e['stage']}/{e['kind']}): {_short(e['message'], 100)}")


def _print_asset(
    settings: Settings,
    asset: dict[str, Any],
    results: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> None:
    """Print one asset of ``skyeye results``: a heading, its results' table and its errors."""
    size = f"{asset['width']}x{asset['height']}" if asset["width"] else "?"
    if asset["duration_s"] is not None:
        size += f", {asset['duration_s']:.1f} s"
    print(f"\n{asset['object_key']}  [{asset['asset_id']}]  {size} {asset['status']}")
    if asset["preview_key"]:
        print(f"  preview: s3://{settings.derived_bucket}/{asset['preview_key']}")
    rows = [_result_row(r) for r in results if r["asset_id"] == asset["asset_id"]]
    if rows:
        print(table(rows, ("tile/frame", "task", "asked", "answer")))
    for e in (e for e in errors if e["asset_id"] == asset["asset_id"]):
        print(f"  error ({e['stage']}/{e['kind']}): {e['message']}")


def _result_row(r: dict[str, Any]) -> tuple[object, str, str, str]:
    """One line of an asset's results table: where in the asset, task, question, answer."""
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
    return where, r["task_kind"], _short(r["task_text"], 36), _short(answer)


def cmd_results(args: argparse.Namespace) -> int:
    """``skyeye results``: print every asset's (or one asset's) results and errors."""
    settings = resolve(_settings(args))
    _print_results(settings, args.asset, args.json)
    return 0


def _engine(args: argparse.Namespace) -> tuple[Settings, Engine]:
    settings = resolve(_settings(args))
    assert settings.database_url is not None
    return settings, postgres.create_engine(settings.database_url)


def _asset_and_detections(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _, engine = _engine(args)
    with engine.connect() as conn:
        asset = catalog.stac_asset(conn, args.asset)
        detections = catalog.asset_detections(conn, args.asset)
    if asset is None:
        raise UsageError(f"no asset {args.asset} in the catalog (`skyeye results` lists them all)")
    return asset, detections


def cmd_stac(args: argparse.Namespace) -> int:
    """``skyeye stac``: print an asset's STAC 1.1 Item, its detections linked as its labels."""
    asset, detections = _asset_and_detections(args)
    derived = _settings(args).derived_bucket
    print(_dump(stac.item(asset, detections, args.labels_href, preview_bucket=derived)))
    return 0


def cmd_detections(args: argparse.Namespace) -> int:
    """``skyeye detections``: an asset's detections as a table, or with --geojson as GeoJSON."""
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
    print(table(rows, header) if rows else "no detections")
    return 0


def _lon_lat_centre(bounds: Sequence[float] | None) -> str:
    if bounds is None:
        return "-"
    west, south, east, north = bounds
    return f"{(west + east) / 2:.6f}, {(south + north) / 2:.6f}"


def cmd_status(args: argparse.Namespace) -> int:
    """``skyeye status``: components, Serve's health, counts and lag; exit 3 when not running."""
    settings = _settings(args)
    state = read_state(settings.home)
    report: dict[str, Any] = {
        "home": str(settings.home),
        "running": bool(state and state.supervisor_alive),
    }
    if state is not None:
        report["components"] = [c.model_dump(mode="json") for c in state.components]
    if state is not None and report["running"]:
        report |= _live_status(resolve(settings), state)
    if args.json:
        print(_dump(report))
        return 0 if report["running"] else 3
    print(f"state folder: {report['home']}")
    if state is None or not report["running"]:
        print("stack: not running (start it with `skyeye up`)")
        return 3
    rows = [
        (
            c.name,
            c.pid or "-",
            c.endpoint or "-",
            _component_state(c),
            c.restarts,
            _last_exit(c),
        )
        for c in state.components
    ]
    print(table(rows, ("component", "pid", "endpoint", "state", "restarts", "last exit")))
    health = report["serve"]
    print(f"\nserve app {settings.serve_app}: {health['status']}", end="")
    print(f" ({health['message']})" if health["message"] else "")
    if health["deployments"]:
        deployments = [
            (
                d["name"],
                d["status"],
                ", ".join(f"{n} {s.lower()}" for s, n in sorted(d["replicas"].items())) or "0",
                _short(d["message"]) or "-",
            )
            for d in health["deployments"]
        ]
        print(table(deployments, ("deployment", "status", "replicas", "message")))
    if report["counts"] is not None:
        print("\n" + table(sorted(report["counts"].items()), ("count", "value")))
    lag = [(name, "unknown" if n is None else n) for name, n in report["lag"].items()]
    print("\n" + table(sorted(lag), ("consumer", "lag")))
    if report["problems"]:
        print("\n" + "\n".join(f"problem: {problem}" for problem in report["problems"]))
    return 0


def _component_state(component: ComponentState) -> str:
    if component.kind == "external":
        return "external"  # not ours to run: no pid to watch
    if component.alive:
        return "up"
    return f"DOWN: {component.last_exit or 'not running'}"


def _last_exit(component: ComponentState) -> str:
    if component.last_exit is None:
        return "-"
    when = component.last_exit_at
    return component.last_exit + (f" at {when.astimezone():%H:%M:%S}" if when else "")


def _live_status(settings: Settings, state: StackState) -> dict[str, Any]:
    """Counts, consumer lag and Serve's health of a running stack.

    A component that is down or does not answer leaves its part unknown (None) with one line in
    ``problems``.
    """
    problems: list[str] = []

    def down(name: str) -> str | None:
        component = state.component(name)
        if component is None or component.kind == "external" or component.alive:
            return None
        return f"{name} is down ({component.last_exit or 'not running'})"

    def ask(part: str, name: str, query: Callable[[], Any]) -> Any:
        reason = down(name)
        if reason is None:
            try:
                return query()
            except Exception as exc:
                reason = _outage(exc)
                if reason is None:
                    raise
                log.info("status: %s failed", part, exc_info=exc)
        problems.append(f"{part}: unknown, {reason}")
        return None

    def counts() -> dict[str, int]:
        assert settings.database_url is not None
        engine = postgres.create_engine(settings.database_url)
        try:
            with engine.connect() as conn:
                return catalog.counts(conn)
        finally:
            engine.dispose()

    report: dict[str, Any] = {"counts": ask("counts", "postgres", counts), "lag": {}}
    for consumer, topic, group in (
        ("planner", settings.topic_events, settings.planner_group),
        ("worker", settings.topic_work, settings.worker_group),
    ):
        report["lag"][consumer] = ask(
            f"{consumer} lag", "kafka", functools.partial(kafka.lag, settings, topic, group)
        )
    ray_down = down("ray")
    health = serve.AppHealth("unknown", ray_down) if ray_down else serve.app_health(settings)
    if health.status != "RUNNING":
        problems.append(f"serve app {settings.serve_app}: {health.status}, {health.message}")
    return report | {"serve": dataclasses.asdict(health), "problems": problems}


def _outage(exc: BaseException) -> str | None:
    """One line for people when ``exc`` says that a service of the stack is unreachable."""
    return postgres.transient_reason(exc) or kafka.transient_reason(exc) or s3.transient_reason(exc)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    """``skyeye dlq list``: every dead letter, oldest first: when, where from, why, replays."""
    _, engine = _engine(args)
    with engine.connect() as conn:
        letters = catalog.dead_letters(conn)
    if args.json:
        print(_dump(letters))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    rows = [
        (
            str(d["dead_letter_id"])[: dlq.MIN_PREFIX],
            d["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
            d["stage"],
            d["kind"],
            f"{d['topic']}/{d['partition']}/{d['offset']}",
            str(d["asset_id"])[: dlq.MIN_PREFIX] if d["asset_id"] else "-",
            d["replays"],
            _short(d["message"].split("; kept as dead letter")[0], 70),
        )
        for d in letters
    ]
    header = ("id", "when (UTC)", "stage", "kind", "from", "asset", "replays", "why")
    print(table(rows, header))
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """``skyeye dlq replay``: publish the given dead letters (or all never replayed) again."""
    settings, engine = _engine(args)
    try:
        ids = dlq.pending(engine) if args.all else dlq.find(engine, args.ids)
    except dlq.DeadLetterNotFound as exc:
        raise UsageError(str(exc)) from None
    if not ids:
        _say("no dead letter waits for a replay")
        return 0
    producer = kafka.producer(settings)
    try:
        for replayed in dlq.replay(engine, producer, ids):
            print(
                f"{replayed.dead_letter_id}\treplayed to {replayed.topic} "
                f"(partition {replayed.partition}, offset {replayed.offset})"
            )
    finally:
        producer.close(timeout=10)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``skyeye demo``: start the stack, ingest the samples, print their results, stop."""
    settings = _settings(args)
    started = time.monotonic()
    stack = launch(settings, progress=_say)
    try:
        _say(f"stack up in {time.monotonic() - started:.1f} s")
        generated = settings.home / "samples"
        files = [
            *samples.aerial_photos(),
            samples.world_scene(),
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


def _metadata_item(text: str) -> tuple[str, str]:
    """KEY=VALUE of S3 user metadata, which travels in HTTP headers: US-ASCII only."""
    key, value = _key_value(text)
    if not all(c.isalnum() or c in "-_." for c in key) or not key.isascii():
        raise argparse.ArgumentTypeError(
            f"metadata key {key!r}: only letters, digits, '-', '_' and '.' (US-ASCII)"
        )
    if not value.isascii() or not value.isprintable():
        raise argparse.ArgumentTypeError(
            f"metadata value {value!r}: only printable US-ASCII (S3 sends it in a header)"
        )
    return key, value


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the same orderly teardown path as Ctrl-C
    raise KeyboardInterrupt


Command = Callable[[argparse.Namespace], int]


def _reads_model_folders(hint: str) -> Callable[[Command], Command]:
    """Make a folder that is not a model folder a clear error (exit 2) with ``hint``.

    For commands that load a model folder in-process: the user sees one line, not a traceback.
    """

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
    """``skyeye model eval``: score the configured model on held-out scenes of the lab's world."""
    settings = _settings(args)
    model_dir = settings.resolved_model_dir
    _say(f"evaluating {model_dir} on {args.scenes} held-out scenes (seed {args.seed})")
    # the lab (the procedural world, torch) loads only for this command
    from skyeye.lab.evaluation import evaluate

    report = evaluate(model_dir, args.scenes, args.seed, args.batch, args.difficulty)
    print(report.model_dump_json(indent=2) if args.json else report.table())
    return 0


@_reads_model_folders("--init and --tower take a folder written by skyeye model train")
def cmd_model_train(args: argparse.Namespace) -> int:
    """``skyeye model train``: train skyeye-tiny into --out with the recipe the options adjust."""
    # torch and the training loop load only for this command
    from skyeye.lab.training import Stages, train

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
    """The ``skyeye`` command line: global options and one subcommand per task."""
    parser = argparse.ArgumentParser(
        prog="skyeye",
        description="Watch Earth-observation imagery streams with a vision-language model.",
        epilog="Settings come from SKYEYE_* environment variables (README.md, section Settings).",
    )
    parser.add_argument(
        "--home", type=Path, help="state folder of the embedded stack (default: $SKYEYE_HOME)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # `skyeye --help` lists the commands in the order they are added here
    p = sub.add_parser("up", help="start the embedded stack and the pipeline; Ctrl-C stops it")
    p.set_defaults(func=cmd_up)
    _add_ingest(sub)
    _add_read_commands(sub)
    search_cli.add_parsers(sub)
    tokens.add_parser(sub)
    rules.add_parsers(sub)
    _add_dlq(sub)
    _add_db(sub)
    p = sub.add_parser("demo", help="start, ingest the sample images, print results, stop")
    p.add_argument(
        "--timeout",
        type=bounded(float, 0),
        default=600.0,
        help="seconds to wait for results (default 600)",
    )
    p.set_defaults(func=cmd_demo)
    _add_model_commands(sub)
    bench.add_parser(sub)
    return parser


def _add_ingest(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ingest``: the files to upload, their key prefix and metadata, waiting, output."""
    p = commands.add_parser("ingest", help="upload files and announce them to the pipeline")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files to ingest")
    p.add_argument("--prefix", default="uploads", help="object key prefix (default: uploads)")
    p.add_argument(
        "--meta",
        type=_metadata_item,
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
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per input: path, key, asset_id, status, error (and, with "
        "--wait, the asset's error rows)",
    )
    p.set_defaults(func=cmd_ingest)


def _add_read_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``results``, ``stac``, ``detections`` and ``status``: what the catalog and stack hold."""
    p = commands.add_parser("results", help="print stored results (and errors)")
    p.add_argument("--asset", type=uuid.UUID, help="only this asset id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_results)

    p = commands.add_parser(
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

    p = commands.add_parser("detections", help="print an asset's detections: a table, or GeoJSON")
    p.add_argument("asset", type=uuid.UUID, metavar="ASSET_ID")
    p.add_argument(
        "--geojson",
        action="store_true",
        help="a GeoJSON FeatureCollection following the STAC label extension",
    )
    p.set_defaults(func=cmd_detections)

    p = commands.add_parser("status", help="components, pids, ports, topic lag, counts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)


def _add_db(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``db migrate``: bring a database's schema up to date (a deployment's migration job)."""
    p = commands.add_parser("db", help="the catalog's database: apply its schema migrations")
    db_commands = p.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    p = db_commands.add_parser(
        "migrate",
        help="apply the pending schema migrations to SKYEYE_DATABASE_URL",
        description="Apply every pending migration, in order, to the database at "
        "SKYEYE_DATABASE_URL (the embedded stack migrates its own when it starts). Idempotent: "
        "nothing to apply is success. Concurrent runs wait for each other.",
    )
    p.set_defaults(func=cmd_db_migrate)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """``skyeye db migrate``: the versions applied now, or that there were none to apply."""
    url = _settings(args).database_url
    if url is None:
        raise UsageError("set SKYEYE_DATABASE_URL to the database to migrate")
    engine = postgres.create_engine(url)
    try:
        applied = postgres.migrate(engine)
    except postgres.MigrationError as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        engine.dispose()
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))}")
    else:
        print("the schema is up to date: nothing to apply")
    return 0


def _add_dlq(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dlq`` and its ``list`` and ``replay`` commands, for the messages consumers set aside."""
    p = commands.add_parser(
        "dlq",
        help="the messages consumers set aside (dead letters): list them, replay them",
        description="A consumer that cannot handle a message (a bug, or an outage past its "
        "retries) copies it to the dead-letter topic, records why, and goes on. Replay "
        "publishes the message again to its topic once the cause is fixed.",
    )
    dlq_commands = p.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    p = dlq_commands.add_parser("list", help="every dead letter: when, where from, why, replays")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_dlq_list)
    p = dlq_commands.add_parser(
        "replay",
        help="publish dead letters again to the topic they came from",
        description="Publish dead letters again, key, value and headers, to the topic they "
        "came from; the consumer reopens what the dead letter ended (the failed work item, or "
        "the asset whose planning failed) and handles it again.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "ids",
        nargs="*",
        default=[],
        metavar="ID",
        help=f"dead letter ids, or their first {dlq.MIN_PREFIX}+ characters (`skyeye dlq list`)",
    )
    which.add_argument("--all", action="store_true", help="every dead letter never replayed")
    p.set_defaults(func=cmd_dlq_replay)


def _add_model_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``model`` and its commands: ``inspect``, ``eval`` and ``train``."""
    p = commands.add_parser("model", help="check the published weights; evaluate or train a model")
    model_commands = p.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    model_inspect.add_parser(model_commands)
    _add_model_eval(model_commands)
    _add_model_train(model_commands)


def _add_model_eval(model_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``model eval``: held-out scenes and their seed, batch size, difficulty, output."""
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


def _add_model_train(model_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``model train``: output folder, seed, time budget, device, start point and recipe."""
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
        "before: docs/skyeye-tiny.md (its training.json logs them too).",
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
        "(skyeye.lab.training.Stages.kind_weights)",
    )
    p.add_argument(
        "--number-sigma",
        type=bounded(float, 0),
        metavar="S",
        help="stage 2 scores box numbers against a Gaussian of this width on the 0-100 scale, "
        "so a near miss costs less than a far one (0: exact targets; default: the recipe's, "
        "skyeye.lab.training.Stages.number_sigma)",
    )
    p.add_argument(
        "--eval-scenes",
        type=non_negative_int,
        default=20,
        help="held-out scenes scored at the end (0: none; default 20)",
    )
    p.set_defaults(func=cmd_model_train)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``skyeye`` command; returns its exit status (2 for an error said in one line)."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that has gone (`| head`) shows here, not at exit
        return code
    except (StackError, StackNotRunning, TimeoutError, IngestFailed, CatalogUnavailable) as exc:
        _say(f"error: {exc}")
        return 2
    except UsageError as exc:
        _say(f"error: {exc}")
        return 2
    except ValidationError as exc:
        invalid = invalid_settings(exc)
        if invalid is None:
            raise
        _say(f"error: invalid setting: {invalid}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        # The reader stopped reading: end quietly, as the Python docs advise (no flush of the
        # rest at exit), with the status of a program that SIGPIPE ended.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as exc:
        reason = _outage(exc)
        if reason is None:
            raise
        log.info("%s failed", args.command, exc_info=exc)
        _say(f"error: {reason} (see `skyeye status`)")
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
