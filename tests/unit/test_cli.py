import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from skyeye.cli import build_parser, main


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


def test_ingest_refuses_missing_files_first(tmp_path) -> None:
    with pytest.raises(SystemExit, match="not a file"):
        main(["--home", str(tmp_path), "ingest", str(tmp_path / "nope.png")])


def test_training_starts_from_a_tower_or_a_whole_model_not_both() -> None:
    args = build_parser().parse_args(["model", "train", "--out", "m", "--init", "earlier"])
    assert (args.init, args.tower) == (Path("earlier"), None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["model", "train", "--out", "m", "--tower", "a", "--init", "b"])


def test_kind_weights_change_the_recipe_one_kind_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from skyeye import training

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
    from skyeye import training

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
