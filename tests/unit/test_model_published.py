"""The published-weights path on tiny files in each source's real format and key names."""

import argparse
import json
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import LlamaForCausalLM

from skyeye.cli.main import build_parser
from skyeye.model import CheckpointError, TextDecoder, VisionEncoder, prompts
from skyeye.model.architecture import VisionStage, llama_config
from skyeye.model.checkpoint import CONFIG_FILE, llm_tensor_shapes, read_manifest
from skyeye.model.config import LoraConfig, ModelConfig
from skyeye.model.published import (
    LORA_PREFIX,
    PublishedModel,
    convert_published,
    eva_key_map,
    expected_tensors,
    inspect_published,
    interpolate_position_embedding,
    load_published,
)
from skyeye.model.vision import preprocess
from skyeye.model.vocabulary import tiny_tokenizer
from tests.unit._eva_reference import eva_reference, lavis_interpolate_pos_embed

LORA = LoraConfig(r=4, alpha=16)
CONFIG = ModelConfig.tiny().model_copy(update={"lora": LORA})
EVA_GRID = 16  # 224 px / patch 14, as LAVIS ships eva_vit_g.pth


@dataclass(frozen=True)
class Sources:
    vision: Path
    llm: Path
    checkpoint: Path

    def args(self) -> tuple[Path, Path, Path]:
        return self.vision, self.llm, self.checkpoint


def _eva_state(seed: int) -> dict[str, torch.Tensor]:
    """An eva_vit_g.pth-style state dict: EVA names, 224 px grid, one block more than used."""
    g = torch.Generator().manual_seed(seed)
    v = CONFIG.vision
    width, hidden, patch = v.hidden_size, v.mlp_hidden_size, v.patch_size

    def rand(*shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(*shape, generator=g)

    state = {
        "cls_token": rand(1, 1, width, scale=0.02),
        "pos_embed": rand(1, 1 + EVA_GRID**2, width, scale=0.02),
        "patch_embed.proj.weight": rand(width, 3, patch, patch, scale=(3 * patch * patch) ** -0.5),
        "patch_embed.proj.bias": rand(width, scale=0.1),
    }
    for i in range(v.num_layers + 1):
        p = f"blocks.{i}."
        state |= {
            p + "norm1.weight": rand(width, scale=0.1, offset=1.0),
            p + "norm1.bias": rand(width, scale=0.1),
            p + "attn.qkv.weight": rand(3 * width, width, scale=width**-0.5),
            p + "attn.q_bias": rand(width, scale=0.1),
            p + "attn.v_bias": rand(width, scale=0.1),
            p + "attn.proj.weight": rand(width, width, scale=width**-0.5),
            p + "attn.proj.bias": rand(width, scale=0.1),
            p + "norm2.weight": rand(width, scale=0.1, offset=1.0),
            p + "norm2.bias": rand(width, scale=0.1),
            p + "mlp.fc1.weight": rand(hidden, width, scale=width**-0.5),
            p + "mlp.fc1.bias": rand(hidden, scale=0.1),
            p + "mlp.fc2.weight": rand(width, hidden, scale=hidden**-0.5),
            p + "mlp.fc2.bias": rand(width, scale=0.1),
        }
    return state


def _lora_key(layer: int, module: str, half: str) -> str:
    return f"{LORA_PREFIX}model.layers.{layer}.self_attn.{module}.lora_{half}.weight"


def _checkpoint(seed: int) -> dict[str, object]:
    """A MiniGPT-v2 training checkpoint: trained tensors under "model", peft 0.2 LoRA names."""
    g = torch.Generator().manual_seed(seed)
    hidden, r = CONFIG.llm.hidden_size, LORA.r
    model = {
        "llama_proj.weight": torch.randn(hidden, CONFIG.projector_in, generator=g) * 0.05,
        "llama_proj.bias": torch.randn(hidden, generator=g) * 0.1,
    }
    for layer in range(CONFIG.llm.num_layers):
        for module in ("q_proj", "v_proj"):
            model[_lora_key(layer, module, "A")] = torch.randn(r, hidden, generator=g) * 0.1
            model[_lora_key(layer, module, "B")] = torch.randn(hidden, r, generator=g) * 0.1
    return {"model": model, "epoch": 3}


def _write_llm(folder: Path) -> None:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(5)
    llm = LlamaForCausalLM(
        llama_config(
            CONFIG,
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
        )
    )
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("published")
    torch.save(_eva_state(1), root / "eva_vit_g.pth")
    torch.save(_checkpoint(2), root / "skyeyegpt.pth")
    _write_llm(root / "Llama-2-7b-chat-hf")
    return Sources(root / "eva_vit_g.pth", root / "Llama-2-7b-chat-hf", root / "skyeyegpt.pth")


def _variant(
    sources: Sources,
    tmp_path: Path,
    *,
    eva: Callable[[dict], None] | None = None,
    trained: Callable[[dict], None] | None = None,
) -> Sources:
    """The sources with the EVA state dict and/or the checkpoint's "model" edited."""
    vision, checkpoint = sources.vision, sources.checkpoint
    if eva:
        state = torch.load(sources.vision, weights_only=True)
        eva(state)
        vision = tmp_path / "eva_vit_g.pth"
        torch.save(state, vision)
    if trained:
        saved = torch.load(sources.checkpoint, weights_only=True)
        trained(saved["model"])
        checkpoint = tmp_path / "skyeyegpt.pth"
        torch.save(saved, checkpoint)
    return Sources(vision, sources.llm, checkpoint)


@pytest.fixture(scope="module")
def loaded(sources: Sources) -> PublishedModel:
    return load_published(*sources.args(), CONFIG, dtype=torch.float32)


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (90 + 40 * i, 130, 3), dtype=np.uint8) for i in range(n)]


def test_report_accounts_for_every_tensor(sources: Sources) -> None:
    report = inspect_published(*sources.args(), CONFIG)
    assert report.ok, report.problems()
    layers = CONFIG.vision.num_layers
    eva = _eva_state(1)
    vision = report.vision
    assert vision.tensors == len(eva) == 4 + 13 * (layers + 1)
    assert len(vision.used) == 4 + 13 * layers
    assert sorted(vision.dropped_by_design) == sorted(k for k in eva if k.startswith("blocks.2."))
    assert not (vision.missing or vision.unexpected or vision.mis_shaped)

    llm_keys = load_file(sources.llm / "model.safetensors").keys()
    assert report.llm.tensors == len(report.llm.used) == len(llm_keys)
    assert report.llm.dropped_by_design == {}

    checkpoint = report.checkpoint
    assert checkpoint.tensors == len(checkpoint.used) == 2 + 2 * 2 * CONFIG.llm.num_layers
    assert sorted(checkpoint.initialised) == ["ln_vision.bias", "ln_vision.weight"]
    assert checkpoint.ignored_entries == ["epoch"]

    assert report.lora is not None
    assert (report.lora.pairs, report.lora.r, report.lora.scale) == (4, 4, 4.0)
    assert report.position_embedding.model_dump() == {
        "source_grid": 16,
        "target_grid": 32,
        "interpolated": True,
    }
    with torch.device("meta"):
        stage = VisionStage(CONFIG)
    assert report.parameters.vision == sum(p.numel() for p in stage.vision_model.parameters())
    assert report.parameters.projector == 64 * 128 + 64
    assert report.parameters.llm == sum(
        t.numel() for t in load_file(sources.llm / "model.safetensors").values()
    )
    assert type(report).model_validate_json(report.model_dump_json()) == report
    assert "13 x EVA block 2" in report.summary() and "problems: none" in report.summary()


def test_lora_is_merged_into_q_and_v(sources: Sources, loaded: PublishedModel) -> None:
    base = load_file(sources.llm / "model.safetensors")
    trained = _checkpoint(2)["model"]
    for layer in range(CONFIG.llm.num_layers):
        attn = loaded.llm.model.layers[layer].self_attn
        for module in ("q_proj", "v_proj"):
            a, b = trained[_lora_key(layer, module, "A")], trained[_lora_key(layer, module, "B")]
            expected = base[f"model.layers.{layer}.self_attn.{module}.weight"] + 0.25 * 16 * b @ a
            torch.testing.assert_close(getattr(attn, module).weight, expected)
        for module in ("k_proj", "o_proj"):
            key = f"model.layers.{layer}.self_attn.{module}.weight"
            assert torch.equal(getattr(attn, module).weight, base[key])
    assert loaded.config.lora is None  # merged: the served model carries no adapters


def test_position_embedding_is_interpolated_bicubically(loaded: PublishedModel) -> None:
    pos = _eva_state(1)["pos_embed"]
    width = CONFIG.vision.hidden_size
    grid = pos[:, 1:].reshape(1, EVA_GRID, EVA_GRID, width).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    expected = torch.cat([pos[:, :1], resized.permute(0, 2, 3, 1).reshape(1, 1024, width)], dim=1)
    loaded_pos = loaded.vision.vision_model.embeddings.position_embedding
    assert loaded_pos.shape == (1, 1025, width)
    torch.testing.assert_close(loaded_pos, expected)
    assert torch.equal(loaded_pos[:, 0], pos[:, 0])
    assert torch.equal(interpolate_position_embedding(expected, 32), expected)


def test_qkv_bias_and_ln_vision(loaded: PublishedModel) -> None:
    eva = _eva_state(1)
    for i in range(CONFIG.vision.num_layers):
        bias = loaded.vision.vision_model.encoder.layers[i].self_attn.qkv.bias
        q, k, v = bias.chunk(3)
        assert torch.equal(q, eva[f"blocks.{i}.attn.q_bias"]) and not k.any()
        assert torch.equal(v, eva[f"blocks.{i}.attn.v_bias"])
    ln = loaded.vision.vision_model.post_layernorm
    assert ln.weight.dtype == torch.float32
    assert torch.equal(ln.weight, torch.ones(32)) and torch.equal(ln.bias, torch.zeros(32))


def test_vision_equals_a_direct_eva_implementation(loaded: PublishedModel) -> None:
    weights = {**_eva_state(1), **_checkpoint(2)["model"]}
    weights |= {"ln_vision.weight": torch.ones(32), "ln_vision.bias": torch.zeros(32)}
    pixels = preprocess(_images(2), 448)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.vision(pixels), eva_reference(weights, CONFIG, pixels), atol=1e-5, rtol=1e-5
        )


def test_ln_vision_from_the_checkpoint(sources: Sources, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(9)
    ln = {
        "ln_vision.weight": 1 + torch.randn(32, generator=g),
        "ln_vision.bias": torch.randn(32, generator=g),
    }
    variant = _variant(sources, tmp_path, trained=lambda model: model.update(ln))
    model = load_published(*variant.args(), CONFIG, dtype=torch.float32)
    assert model.report.checkpoint.initialised == {}
    assert {"ln_vision.weight", "ln_vision.bias"} <= set(model.report.checkpoint.used)
    weights = {**_eva_state(1), **_checkpoint(2)["model"], **ln}
    pixels = preprocess(_images(1), 448)
    with torch.no_grad():
        torch.testing.assert_close(
            model.vision(pixels), eva_reference(weights, CONFIG, pixels), atol=1e-5, rtol=1e-5
        )


def _fails(variant: Sources, *patterns: str, config: ModelConfig = CONFIG) -> None:
    report = inspect_published(*variant.args(), config)
    assert not report.ok
    with pytest.raises(CheckpointError) as caught:
        load_published(*variant.args(), config, dtype=torch.float32)
    for pattern in patterns:
        assert pattern in str(caught.value), str(caught.value)


def test_mis_shaped_tensor_names_key_and_both_shapes(sources: Sources, tmp_path: Path) -> None:
    def narrow(model: dict) -> None:
        model["llama_proj.weight"] = model["llama_proj.weight"][:, :127].clone()

    _fails(
        _variant(sources, tmp_path, trained=narrow),
        "mis-shaped llama_proj.weight: file has [64, 127], model expects [64, 128]",
    )


def test_missing_tensor(sources: Sources, tmp_path: Path) -> None:
    variant = _variant(sources, tmp_path, eva=lambda s: s.pop("blocks.1.mlp.fc2.bias"))
    _fails(variant, "missing blocks.1.mlp.fc2.bias (expected shape [32])")


def test_unexpected_tensors(sources: Sources, tmp_path: Path) -> None:
    def extra(state: dict) -> None:
        state["norm.weight"] = torch.ones(32)
        state["blocks.3.norm1.weight"] = torch.ones(32)  # only the one last block is by design

    _fails(
        _variant(sources, tmp_path, eva=extra),
        "unexpected norm.weight (shape [32];",
        "unexpected blocks.3.norm1.weight (shape [32];",
    )


def test_lonely_lora_half(sources: Sources, tmp_path: Path) -> None:
    lonely_a, gone_b = _lora_key(1, "v_proj", "A"), _lora_key(1, "v_proj", "B")
    variant = _variant(sources, tmp_path, trained=lambda model: model.pop(gone_b))
    _fails(variant, f"LoRA pair incomplete: {lonely_a} [4, 64] has no {gone_b} (expected [64, 4])")


def test_lora_rank_must_agree(sources: Sources) -> None:
    config = CONFIG.model_copy(update={"lora": LoraConfig(r=8, alpha=16)})
    key = _lora_key(0, "q_proj", "A")
    _fails(
        sources,
        "LoRA rank [4]; the arch config says r=8",
        f"mis-shaped {key}: file has [4, 64], model expects [8, 64]",
        config=config,
    )


def test_llm_dimensions_must_agree(sources: Sources) -> None:
    llm = CONFIG.llm.model_copy(update={"num_layers": 3})
    _fails(
        sources,
        "num_hidden_layers: arch config says 3, llm says 2",
        config=CONFIG.model_copy(update={"llm": llm}),
    )


def test_unreadable_sources(sources: Sources, tmp_path: Path) -> None:
    torch.save({"state_dict": _checkpoint(2)["model"]}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        inspect_published(sources.vision, sources.llm, tmp_path / "bad.pth", CONFIG)
    with pytest.raises(CheckpointError, match="cannot read it as a torch checkpoint"):
        inspect_published(tmp_path / "absent.pth", sources.llm, sources.checkpoint, CONFIG)


def test_sentencepiece_only_tokenizer_is_a_clear_error(sources: Sources, tmp_path: Path) -> None:
    llm = tmp_path / "llm"
    llm.mkdir()
    for name in ("config.json", "model.safetensors"):
        (llm / name).write_bytes((sources.llm / name).read_bytes())
    (llm / "tokenizer.model").write_bytes(b"\x0a\x00")
    (llm / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    with pytest.raises(CheckpointError, match="sentencepiece package is not installed"):
        load_published(sources.vision, llm, sources.checkpoint, CONFIG, dtype=torch.float32)


def test_pytorch_bin_shards_with_rotary_tables(
    sources: Sources, tmp_path: Path, loaded: PublishedModel
) -> None:
    llm = tmp_path / "llm"
    llm.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (llm / name).write_bytes((sources.llm / name).read_bytes())
    state = load_file(sources.llm / "model.safetensors")
    keys = sorted(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": keys[::2],
        "pytorch_model-00002-of-00002.bin": keys[1::2],
    }
    for name, shard_keys in shards.items():
        shard = {k: state[k] for k in shard_keys}
        shard["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)
        torch.save(shard, llm / name)
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (llm / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    model = load_published(sources.vision, llm, sources.checkpoint, CONFIG, dtype=torch.float32)
    assert list(model.report.llm.dropped_by_design.values()) == [
        "rotary table, recomputed from the config"
    ]
    assert len(model.report.llm.files) == 2
    for name, param in model.llm.named_parameters():
        assert torch.equal(param, loaded.llm.get_parameter(name)), name


def test_published_config_is_checked_on_meta_without_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    expected = expected_tensors(ModelConfig.published())
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200  # the real model is ~7.7e9 parameters
    assert expected.errors == []
    assert expected.checkpoint["llama_proj.weight"] == [4096, 5632]
    assert expected.checkpoint["llama_proj.bias"] == [4096]
    assert expected.vision["pos_embed"] == [1, 257, 1408]
    assert expected.vision["blocks.38.attn.qkv.weight"] == [4224, 1408]
    assert expected.vision["blocks.38.mlp.fc1.weight"] == [6144, 1408]
    assert not any(k.startswith("blocks.39.") for k in expected.vision)
    assert set(eva_key_map(39)) < set(expected.vision)
    assert len(expected.lora_pairs) == 64 and len(expected.checkpoint) == 2 + 128
    a_key, b_key = expected.lora_pairs["model.layers.31.self_attn.v_proj.weight"]
    assert a_key == f"{LORA_PREFIX}model.layers.31.self_attn.v_proj.lora_A.weight"
    assert (expected.checkpoint[a_key], expected.checkpoint[b_key]) == ([64, 4096], [4096, 64])
    assert expected.llm["model.embed_tokens.weight"] == [32000, 4096]
    assert expected.llm == llm_tensor_shapes(
        llama_config(ModelConfig.published(), bos_id=1, eos_id=2, pad_id=0)
    )
    counts = expected.parameters
    assert counts.projector == 5632 * 4096 + 4096
    assert 0.98e9 < counts.vision < 0.99e9 and 6.7e9 < counts.llm < 6.8e9


def test_converted_folder_loads_with_the_serving_loaders(
    sources: Sources, tmp_path: Path, loaded: PublishedModel
) -> None:
    out = tmp_path / "skyeyegpt"
    report = convert_published(*sources.args(), out, CONFIG, dtype=torch.float32)
    assert report.ok
    manifest = read_manifest(out)
    assert manifest.config.lora is None
    assert manifest.origin["builder"] == "published"
    assert manifest.origin["ln_vision"] == "initialised"
    assert (out / CONFIG_FILE).is_file()
    encoder, decoder = VisionEncoder.load(out), TextDecoder.load(out)
    images = _images(2)
    assert torch.equal(encoder.encode(images), loaded.encoder().encode(images))
    for name, param in decoder.llm.named_parameters():
        assert torch.equal(param, loaded.llm.get_parameter(name)), name
    embeds = encoder.encode(images[:1])[0]
    instructions = [prompts.caption()]
    assert decoder.generate(embeds, instructions, max_new_tokens=6) == loaded.decoder().generate(
        embeds, instructions, max_new_tokens=6
    )
    with pytest.raises(FileExistsError):
        convert_published(*sources.args(), out, CONFIG, dtype=torch.float32)


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _inspect_argv(sources: Sources, arch: Path, *extra: str) -> list[str]:
    return [
        "model",
        "inspect",
        "--vision",
        str(sources.vision),
        "--llm",
        str(sources.llm),
        "--checkpoint",
        str(sources.checkpoint),
        "--arch-config",
        str(arch),
        *extra,
    ]


def test_inspect_command_json(
    sources: Sources, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text(CONFIG.model_dump_json())
    args = _parse(_inspect_argv(sources, arch, "--json", "--no-run"))
    assert args.func(args) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["caption"] is None
    assert output["report"]["lora"]["pairs"] == 4
    assert output["report"]["checkpoint"]["initialised"].keys() == {
        "ln_vision.weight",
        "ln_vision.bias",
    }

    args = _parse(_inspect_argv(sources, arch, "--json", "--max-new-tokens", "5"))
    assert args.func(args) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["caption"]["image"] == "aero1.jpg"
    assert isinstance(output["caption"]["text"], str)

    saved = tmp_path / "served"
    args = _parse(_inspect_argv(sources, arch, "--no-run", "--save", str(saved)))
    assert args.func(args) == 0
    assert read_manifest(saved).origin["builder"] == "published"
    assert VisionEncoder.load(saved).encode(_images(1)).shape == (1, 256, CONFIG.llm.hidden_size)
    args = _parse(_inspect_argv(sources, arch, "--no-run", "--save", str(saved)))
    assert args.func(args) == 2  # never overwrites a model folder


def test_inspect_command_reports_problems(
    sources: Sources, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text(CONFIG.model_copy(update={"lora": LoraConfig(r=8)}).model_dump_json())
    args = _parse(_inspect_argv(sources, arch))
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "problems: " in out and "LoRA rank [4]" in out and "caption" not in out
    args = _parse(_inspect_argv(sources, tmp_path / "absent.json"))
    assert args.func(args) == 2


def _with_grid(side: int, rows: int | None = None) -> Callable[[dict], None]:
    """Replace the EVA file's position embeddings by a side x side grid (or by ``rows`` rows)."""

    def edit(state: dict) -> None:
        g = torch.Generator().manual_seed(side)
        n = 1 + side * side if rows is None else rows
        state["pos_embed"] = 0.02 * torch.randn(1, n, CONFIG.vision.hidden_size, generator=g)

    return edit


@pytest.mark.parametrize(("side", "interpolated"), [(20, True), (7, True), (32, False)])
def test_position_embeddings_from_any_square_grid(
    sources: Sources, tmp_path: Path, side: int, interpolated: bool
) -> None:
    variant = _variant(sources, tmp_path, eva=_with_grid(side))
    report = inspect_published(*variant.args(), CONFIG)
    assert report.ok, report.problems()
    assert report.position_embedding.model_dump() == {
        "source_grid": side,
        "target_grid": 32,
        "interpolated": interpolated,
    }
    assert "pos_embed" in report.vision.used
    model = load_published(*variant.args(), CONFIG, dtype=torch.float32)
    pos = torch.load(variant.vision, weights_only=True)["pos_embed"]
    loaded_pos = model.vision.vision_model.embeddings.position_embedding
    torch.testing.assert_close(loaded_pos, lavis_interpolate_pos_embed(pos, 32))
    assert torch.equal(loaded_pos, pos) is not interpolated
    weights = {**torch.load(variant.vision, weights_only=True), **_checkpoint(2)["model"]}
    weights |= {"ln_vision.weight": torch.ones(32), "ln_vision.bias": torch.zeros(32)}
    pixels = preprocess(_images(1), 448)
    with torch.no_grad():
        torch.testing.assert_close(
            model.vision(pixels), eva_reference(weights, CONFIG, pixels), atol=1e-5, rtol=1e-5
        )


def test_position_embeddings_off_a_square_grid_are_refused(
    sources: Sources, tmp_path: Path
) -> None:
    variant = _variant(sources, tmp_path, eva=_with_grid(20, rows=1 + 20 * 21))
    _fails(variant, "pos_embed [1, 421, 32] has 420 rows after the CLS row, not a square grid")
    with pytest.raises(ValueError, match="not a square grid"):
        interpolate_position_embedding(torch.zeros(1, 1 + 20 * 21, 4), 32)
    with pytest.raises(ValueError, match="not a square grid"):
        interpolate_position_embedding(torch.zeros(1, 1, 4), 32)


def test_ln_vision_gets_minigptv2_eps_whatever_the_arch_config(
    sources: Sources, tmp_path: Path, loaded: PublishedModel
) -> None:
    # MiniGPT-v2's ln_vision is a plain LayerNorm (1e-5), the tower's norms use 1e-6.
    arch = CONFIG.model_copy(update={"ln_vision_eps": 1e-6})
    out = tmp_path / "skyeyegpt"
    report = convert_published(*sources.args(), out, arch, dtype=torch.float32)
    assert report.config.ln_vision_eps == loaded.config.ln_vision_eps == 1e-5
    assert loaded.vision.vision_model.post_layernorm.eps == 1e-5
    assert json.loads((out / CONFIG_FILE).read_text())["config"]["ln_vision_eps"] == 1e-5
    encoder = VisionEncoder.load(out)
    assert encoder.config.ln_vision_eps == encoder.stage.vision_model.post_layernorm.eps == 1e-5
    assert {layer.layer_norm1.eps for layer in encoder.stage.vision_model.encoder.layers} == {1e-6}


def test_the_published_decoder_can_prompt_as_minigptv2_evaluates(loaded: PublishedModel) -> None:
    bos = loaded.tokenizer.bos_token_id
    embeds = torch.zeros(256, CONFIG.llm.hidden_size)
    single = loaded.decoder().prompt_batch(embeds, [prompts.caption()]).token_ids[0].tolist()
    double = loaded.decoder(double_bos=True).prompt_batch(embeds, [prompts.caption()])
    assert single[:2] == [bos, single[1]] and single[1] != bos
    assert double.token_ids[0].tolist() == [bos, *single]
