import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from skyeye.model import (
    CheckpointError,
    TextDecoder,
    VisionEncoder,
    build_tiny_model,
    prompts,
)
from skyeye.model.checkpoint import (
    CONFIG_FILE,
    LLM_DIR,
    VISION_FILE,
    check_tensors,
    read_manifest,
    save_model,
)
from skyeye.model.config import ModelConfig
from skyeye.settings import PACKAGED_MODEL

LLM_WEIGHTS = Path(LLM_DIR) / "model.safetensors"
INSTRUCTIONS = [prompts.caption(), prompts.detection("road"), prompts.vqa("Is it a city?")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    build_tiny_model(path, seed=0)
    return path


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    for file in model_dir.rglob("*"):
        if file.is_file():
            target = copy / file.relative_to(model_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    return copy


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return {
        **{f"vision/{k}": v for k, v in load_file(path / VISION_FILE).items()},
        **{f"llm/{k}": v for k, v in load_file(path / LLM_WEIGHTS).items()},
    }


def _answers(path: Path) -> tuple[torch.Tensor, list[str]]:
    embeds = VisionEncoder.load(path).encode([_image()])
    return embeds, TextDecoder.load(path).generate(embeds[0], INSTRUCTIONS, max_new_tokens=10)


def test_folder_layout(model_dir: Path) -> None:
    manifest = json.loads((model_dir / CONFIG_FILE).read_text())
    assert manifest["format_version"] == 1 and manifest["origin"] == {"builder": "tiny", "seed": 0}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / LLM_DIR / name).is_file()
    keys = load_file(model_dir / VISION_FILE).keys()
    assert {"llama_proj.weight", "llama_proj.bias", "vision_model.post_layernorm.weight"} <= keys
    assert all(k.startswith(("vision_model.", "llama_proj.")) for k in keys)
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    assert size < 5 * 1024**2


def test_loaded_stages_attend_with_sdpa(model_dir: Path) -> None:
    # The fused kernel is what makes bf16 on a GPU fast; eager attention would still be correct.
    vision = VisionEncoder.load(model_dir).stage.vision_model.config
    assert vision._attn_implementation == "sdpa"
    assert TextDecoder.load(model_dir).llm.config._attn_implementation == "sdpa"


def test_save_load_round_trip(model_dir: Path, tmp_path: Path) -> None:
    encoder, decoder = VisionEncoder.load(model_dir), TextDecoder.load(model_dir)
    save_model(tmp_path / "again", encoder.config, encoder.stage, decoder.llm, decoder.tokenizer)
    before, after = _tensors(model_dir), _tensors(tmp_path / "again")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    embeds, answers = _answers(model_dir)
    embeds_again, answers_again = _answers(tmp_path / "again")
    assert torch.equal(embeds, embeds_again)
    assert answers == answers_again


def test_build_is_deterministic_per_seed(model_dir: Path, tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "same", seed=0)
    build_tiny_model(tmp_path / "other", seed=1)
    reference, same, other = (
        _tensors(p) for p in (model_dir, tmp_path / "same", tmp_path / "other")
    )
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    assert not torch.equal(reference["llm/lm_head.weight"], other["llm/lm_head.weight"])
    for name in (CONFIG_FILE, f"{LLM_DIR}/tokenizer.json", f"{LLM_DIR}/config.json"):
        assert (model_dir / name).read_bytes() == (tmp_path / "same" / name).read_bytes()


def test_build_leaves_no_partial_folders_and_keeps_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_rebuild_and_concurrent_builds(tmp_path: Path) -> None:
    path = tmp_path / "m"
    errors: list[BaseException] = []

    def build() -> None:
        try:
            build_tiny_model(path, seed=0)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    build_tiny_model(path, seed=0)  # same model already there: fine
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    with pytest.raises(FileExistsError, match="another model"):
        build_tiny_model(path, seed=1)


def test_build_refuses_a_foreign_folder_but_fills_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        build_tiny_model(tmp_path / "busy", seed=0)
    (tmp_path / "empty").mkdir()
    build_tiny_model(tmp_path / "empty", seed=0)
    assert (tmp_path / "empty" / CONFIG_FILE).is_file()


def _edit(file: Path, change: dict[str, torch.Tensor | None]) -> None:
    tensors = load_file(file)
    for key, value in change.items():
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    save_file(tensors, file, metadata={"format": "pt"})


def test_mis_shaped_vision_tensor_is_named(model_copy: Path) -> None:
    _edit(model_copy / VISION_FILE, {"llama_proj.weight": torch.zeros(64, 127)})
    with pytest.raises(
        CheckpointError,
        match=r"llama_proj\.weight: file has \[64, 127\], model expects \[64, 128\]",
    ):
        VisionEncoder.load(model_copy)


def test_missing_and_unexpected_vision_tensors_are_named(model_copy: Path) -> None:
    _edit(
        model_copy / VISION_FILE,
        {"vision_model.post_layernorm.bias": None, "ln_vision.weight": torch.ones(32)},
    )
    with pytest.raises(CheckpointError) as caught:
        VisionEncoder.load(model_copy)
    message = str(caught.value)
    assert "missing vision_model.post_layernorm.bias (expected shape [32])" in message
    assert "unexpected ln_vision.weight (shape [32]" in message


def test_bad_llm_tensors_are_named(model_copy: Path) -> None:
    key = "model.layers.1.self_attn.q_proj.weight"
    _edit(model_copy / LLM_WEIGHTS, {key: torch.zeros(64, 65), "model.norm.weight": None})
    with pytest.raises(CheckpointError) as caught:
        TextDecoder.load(model_copy)
    message = str(caught.value)
    assert f"{key}: file has [64, 65], model expects [64, 64]" in message
    assert "missing model.norm.weight (expected shape [64])" in message


def test_llm_config_must_match_the_manifest(model_copy: Path) -> None:
    config_file = model_copy / LLM_DIR / "config.json"
    config = json.loads(config_file.read_text())
    config["num_hidden_layers"] = 3
    config_file.write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"num_hidden_layers: skyeye\.json says 2, llm says 3"
    ):
        TextDecoder.load(model_copy)


def test_manifest_problems(model_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no skyeye\.json"):
        VisionEncoder.load(tmp_path)
    manifest = json.loads((model_copy / CONFIG_FILE).read_text())
    manifest["format_version"] = 99
    (model_copy / CONFIG_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format_version 99"):
        TextDecoder.load(model_copy)


def test_check_tensors_reports_everything() -> None:
    with pytest.raises(CheckpointError) as caught:
        check_tensors({"a": [1], "b": [2, 3]}, {"b": [3, 2], "c": [4]}, "src")
    assert str(caught.value) == (
        "src: missing a (expected shape [1]); unexpected c (shape [4]; the model has no such "
        "tensor); mis-shaped b: file has [3, 2], model expects [2, 3]"
    )
    check_tensors({"a": (1, 2)}, {"a": [1, 2]}, "src")


def test_a_folder_written_before_ln_vision_eps_loads_as_it_was_trained(model_copy: Path) -> None:
    manifest = json.loads((model_copy / CONFIG_FILE).read_text())
    assert manifest["config"]["ln_vision_eps"] == 1e-5  # what this code writes for tiny()
    # Before the field existed, ln_vision ran at the tower's layer_norm_eps.
    del manifest["config"]["ln_vision_eps"]
    (model_copy / CONFIG_FILE).write_text(json.dumps(manifest))
    config = read_manifest(model_copy).config
    assert config.ln_vision_eps == config.vision.layer_norm_eps == 1e-6
    assert VisionEncoder.load(model_copy).stage.vision_model.post_layernorm.eps == 1e-6
    manifest["config"]["vision"]["layer_norm_eps"] = 1e-4
    (model_copy / CONFIG_FILE).write_text(json.dumps(manifest))
    assert read_manifest(model_copy).config.ln_vision_eps == 1e-4


def test_the_packaged_model_keeps_the_ln_vision_eps_it_was_trained_with() -> None:
    assert "ln_vision_eps" not in json.loads((PACKAGED_MODEL / CONFIG_FILE).read_text())["config"]
    assert read_manifest(PACKAGED_MODEL).config == ModelConfig.skyeye_tiny()
    stage = VisionEncoder.load(PACKAGED_MODEL).stage
    assert stage.vision_model.post_layernorm.eps == ModelConfig.skyeye_tiny().ln_vision_eps == 1e-6
