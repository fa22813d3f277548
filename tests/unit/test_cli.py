import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from skyeye.cli.main import build_parser, main
from skyeye.stack import ComponentState, StackState
from skyeye.stack.paths import StackPaths
from skyeye.stack.state import process_create_time, write_state


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["ingest", "--help"], ["model", "eval", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 0
    assert "--scenes" in capsys.readouterr().out


def test_meta_must_be_key_value() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "a.png", "--meta", "novalue"])
    args = build_parser().parse_args(["ingest", "a.png", "--meta", "sensor=uav=3"])
    assert args.meta == [("sensor", "uav=3")]


def test_an_invalid_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKYEYE_DECODING__STEPS", "bogus")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("[skyeye] error: invalid setting: SKYEYE_DECODING__STEPS='bogus'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_status_without_a_stack_says_so(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path), "status"]) == 3
    assert "not running" in capsys.readouterr().out


def test_results_without_a_stack_is_a_clear_error(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(tmp_path), "results"]) == 2
    assert "start it with `skyeye up`" in capsys.readouterr().err


def test_stac_and_detections_take_an_asset_id_and_need_a_stack(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    asset = "00000000-0000-4000-8000-000000000001"
    args = build_parser().parse_args(["detections", asset, "--geojson"])
    assert str(args.asset) == asset and args.geojson
    args = build_parser().parse_args(["stac", asset, "--labels-href", "l.geojson"])
    assert args.labels_href == "l.geojson"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stac", "not-a-uuid"])
    assert main(["--home", str(tmp_path), "stac", asset]) == 2
    assert "start it with `skyeye up`" in capsys.readouterr().err


def test_ingest_refuses_bad_inputs_before_it_looks_for_a_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No stack runs in ``tmp_path``: the inputs are refused before the CLI looks for one."""
    good = tmp_path / "good.png"
    good.write_bytes(b"x")
    argv = ["--home", str(tmp_path), "ingest", str(tmp_path / "nope.png"), str(good), str(tmp_path)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"[skyeye] error: {tmp_path / 'nope.png'}: no such file",
        f"[skyeye] error: {tmp_path}: is a folder, not a file",
        "[skyeye] nothing was uploaded",
    ]


def test_ingest_json_has_one_object_per_input_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No stack runs: the refused run and the run without a stack both end before uploading."""
    clip, sidecar, image = tmp_path / "c.mp4", tmp_path / "c.mp4.geo.json", tmp_path / "i.png"
    for path in (clip, sidecar, image):
        path.write_bytes(b"x")
    home = ["--home", str(tmp_path / "home")]
    inputs = [str(p) for p in (image, sidecar, clip, tmp_path / "gone.png")]
    assert main([*home, "ingest", *inputs, "--prefix", "it", "--json"]) == 2
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == inputs
    assert [r["key"] for r in rows] == ["it/i.png", "it/c.mp4.geo.json", "it/c.mp4", "it/gone.png"]
    assert [r["status"] for r in rows] == ["not_uploaded"] * 3 + ["refused"]
    assert rows[3]["error"] == "no such file" and rows[0]["error"] == "another input was refused"
    assert all(r.keys() == {"path", "key", "asset_id", "status", "error"} for r in rows)
    assert all(r["asset_id"] is None for r in rows)

    assert main([*home, "ingest", *inputs[:3], "--prefix", "../x", "--json", "--wait"]) == 2
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert {r["status"] for r in rows} == {"refused"}
    assert all("'.' or '..' path segment" in r["error"] for r in rows)
    assert captured.err.count("--prefix '../x'") == 1

    assert main([*home, "ingest", *inputs[:3], "--json"]) == 2
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["not_uploaded"] * 3
    assert all("start it with `skyeye up`" in r["error"] for r in rows)


def test_metadata_must_fit_an_http_header() -> None:
    for bad in ("sensor=uav-é", "sen sor=1", "k=line\nbreak"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["ingest", "a.png", "--meta", bad])
    args = build_parser().parse_args(["ingest", "a.png", "--meta", "start_time=2024-01-01 10:00"])
    assert args.meta == [("start_time", "2024-01-01 10:00")]


def _component(name: str, pid: int, **fields: Any) -> ComponentState:
    return ComponentState(
        name=name,
        kind="service" if name in {"planner", "worker"} else "infra",
        pid=pid,
        create_time=process_create_time(pid) if pid == os.getpid() else None,
        **fields,
    )


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_reports_components_down_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recorded stack whose "processes" are this test process (alive) or an ended child
    (down): PostgreSQL looks alive but its socket folder does not exist, Kafka and Ray are
    down. Nothing is stubbed; every query meets the failure it would meet in a real outage."""
    dead = _dead_pid()
    when = datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC)
    no_db = "postgresql+psycopg2://postgres@/postgres?host=/nonexistent-skyeye"
    components = [
        _component("s3", os.getpid(), endpoint="127.0.0.1:1"),
        _component("kafka", dead, endpoint="127.0.0.1:2", restarts=3),
        _component("postgres", os.getpid(), endpoint=no_db),
        _component(
            "ray", dead, endpoint="127.0.0.1:3", last_exit="killed by SIGKILL", last_exit_at=when
        ),
        _component("worker", os.getpid(), restarts=2, last_exit="exited with code 1"),
    ]
    state = StackState(
        home=tmp_path,
        supervisor_pid=os.getpid(),
        supervisor_create_time=process_create_time(os.getpid()),
        started_at=when,
        components=components,
    )
    write_state(StackPaths.of(tmp_path), state)

    assert main(["--home", str(tmp_path), "status"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()[1:]  # the components' table comes first
    rows = {line.split()[0]: line for line in table}
    assert re.search(r"\bstate\s+restarts\s+last exit$", rows["component"])
    assert re.search(r"DOWN: not running\s+3\s+-$", rows["kafka"])
    assert re.search(r"DOWN: killed by SIGKILL\s+0\s+killed by SIGKILL at \d\d:30:05", rows["ray"])
    assert re.search(r"\bup\s+2\s+exited with code 1$", rows["worker"])
    assert "serve app skyeye: unknown (ray is down (killed by SIGKILL))" in out
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert problems == [
        "problem: counts: unknown, the database is unavailable",
        "problem: planner lag: unknown, kafka is down (not running)",
        "problem: worker lag: unknown, kafka is down (not running)",
        "problem: serve app skyeye: unknown, ray is down (killed by SIGKILL)",
    ]

    assert main(["--home", str(tmp_path), "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] and report["counts"] is None
    assert report["lag"] == {"planner": None, "worker": None}
    assert report["serve"] == {
        "status": "unknown",
        "message": "ray is down (killed by SIGKILL)",
        "deployments": [],
    }
    assert report["problems"] == [p.removeprefix("problem: ") for p in problems]
    ray = next(c for c in report["components"] if c["name"] == "ray")
    assert ray["last_exit"] == "killed by SIGKILL" and not ray["alive"]
    assert ray["last_exit_at"].startswith("2024-05-01T12:30:05")


def test_output_to_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """A real process writing into a pipe whose reader has gone, as `| head` leaves it."""
    read, write = os.pipe()
    os.close(read)
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "skyeye.cli", "--home", str(tmp_path), "status"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert ran.stderr == ""
    assert ran.returncode == 128 + signal.SIGPIPE


def test_training_starts_from_a_tower_or_a_whole_model_not_both() -> None:
    args = build_parser().parse_args(["model", "train", "--out", "m", "--init", "earlier"])
    assert (args.init, args.tower) == (Path("earlier"), None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["model", "train", "--out", "m", "--tower", "a", "--init", "b"])


def test_kind_weights_change_the_recipe_one_kind_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from skyeye.lab import training

    passed: dict[str, Any] = {}

    def capture(out_dir: Path, **kwargs: Any) -> SimpleNamespace:
        passed.update(kwargs)
        return SimpleNamespace(seconds=0.0, pretrain_steps=0, instruct_steps=0)

    monkeypatch.setattr(training, "train", capture)
    train = ["model", "train", "--out", "m", "--kind-weight", "refer=0.52"]
    args = build_parser().parse_args([*train, "--kind-weight", "scene=0.05"])
    assert args.func(args) == 0
    expected = {**training.Stages().kind_weights, "refer": 0.52, "scene": 0.05}
    assert passed["stages"].kind_weights == expected
    for bad, says in [
        ("boats=1", "no question kind 'boats'"),
        ("refer=x", "not a number"),
        ("scene=-1", "--kind-weight scene: must be >= 0, got -1"),
    ]:
        args = build_parser().parse_args([*train[:4], "--kind-weight", bad])
        with pytest.raises(SystemExit, match=says):
            args.func(args)


def test_number_sigma_defaults_to_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    from skyeye.lab import training

    passed: dict[str, Any] = {}

    def capture(out_dir: Path, **kwargs: Any) -> SimpleNamespace:
        passed.update(kwargs)
        return SimpleNamespace(seconds=0.0, pretrain_steps=0, instruct_steps=0)

    monkeypatch.setattr(training, "train", capture)
    train = ["model", "train", "--out", "m"]
    for extra, sigma in [([], training.Stages().number_sigma), (["--number-sigma", "0.75"], 0.75)]:
        args = build_parser().parse_args([*train, *extra])
        assert args.func(args) == 0
        assert passed["stages"].number_sigma == sigma


@pytest.mark.parametrize(
    ("command", "option", "value", "message"),
    [
        ("eval", "--scenes", "0", "must be >= 1, got 0"),
        ("eval", "--batch", "x", "expected a whole number, got 'x'"),
        ("eval", "--difficulty", "5", r"must be in \[0, 1\], got 5"),
        ("eval", "--seed", "-3", "must be >= 0, got -3"),
        ("train", "--threads", "0", "must be >= 1, got 0"),
        ("train", "--instruct-steps", "-5", "must be >= 0, got -5"),
        ("train", "--minutes", "-1", "must be >= 0, got -1"),
        ("train", "--workers", "-1", "must be >= 0, got -1"),
        ("train", "--number-sigma", "-1", "must be >= 0, got -1"),
        ("train", "--eval-scenes", "-1", "must be >= 0, got -1"),
        ("inspect", "--max-new-tokens", "0", "must be >= 1, got 0"),
    ],
)
def test_model_commands_refuse_out_of_range_options(
    command: str, option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    required = {
        "eval": [],
        "train": ["--out", "m"],
        "inspect": ["--vision", "v", "--llm", "l", "--checkpoint", "c"],
    }[command]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["model", command, *required, option, value])
    assert re.search(f"argument {option}: {message}", capsys.readouterr().err)


def test_eval_without_a_model_folder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKYEYE_MODEL_DIR", str(tmp_path / "missing"))
    assert main(["--home", str(tmp_path), "model", "eval", "--scenes", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not a SkyEye model folder" in err and "SKYEYE_MODEL_DIR" in err


@pytest.mark.parametrize("start", ["--init", "--tower"])
def test_train_from_a_folder_that_is_not_a_model_is_a_clear_error(
    start: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["model", "train", "--out", str(tmp_path / "m"), start, str(tmp_path / "missing")]
    assert main([*argv, "--instruct-steps", "1", "--eval-scenes", "0"]) == 2
    err = capsys.readouterr().err
    assert "is not a SkyEye model folder" in err and "--init and --tower" in err
