"""The published SkyEyeGPT model, assembled from its three original sources.

MiniGPT-v2 (which SkyEyeGPT's checkpoint runs on) builds its model from:

- the LAVIS/BLIP-2 ``eva_vit_g.pth``: a plain state dict of EVA ViT-g with EVA's key names, 40
  blocks, position embeddings for the 224 px (16x16) grid (any square grid is accepted and
  interpolated, as MiniGPT-v2 does);
- a Hugging Face Llama-2-7b-chat folder;
- the SkyEyeGPT ``.pth``, whose ``["model"]`` holds only what was trained: ``llama_proj.*`` and the
  peft-0.2 LoRA pairs of the LLM's q/v projections (and ``ln_vision.*`` if it was saved).

MiniGPT-v2 loads all three with ``strict=False``; here every tensor of every file is either used,
dropped by design (the 40th EVA block, recomputed rotary tables) or a problem, and every tensor
of the model comes from a file or is reported as initialised. :func:`inspect_published` checks
names and shapes only (files memory-mapped, modules on the meta device, so the full-size model
costs no memory); :func:`load_published` assembles the model with the LoRA merged and the
position embeddings interpolated; :func:`convert_published` saves it as a SkyEye model folder.
ln_vision gets MiniGPT-v2's eps (a plain ``LayerNorm``, 1e-5), whatever the arch config says.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors import safe_open
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from skyeye.model.architecture import VisionStage, llama_config
from skyeye.model.checkpoint import (
    CheckpointError,
    default_dtype,
    is_recomputed_llm_key,
    llm_config_mismatches,
    llm_tensor_shapes,
    load_hf_llm,
    save_model,
)
from skyeye.model.config import MINIGPT_V2_LN_VISION_EPS, LoraConfig, ModelConfig
from skyeye.model.decoder import TextDecoder
from skyeye.model.vision import VisionEncoder

__all__ = [
    "EVA_IMAGE_SIZE",
    "LORA_PREFIX",
    "ExpectedTensors",
    "LoraReport",
    "MisShaped",
    "ParameterCounts",
    "PositionEmbeddingReport",
    "PublishedModel",
    "PublishedReport",
    "SourceReport",
    "convert_published",
    "eva_key_map",
    "expected_tensors",
    "inspect_published",
    "interpolate_position_embedding",
    "load_published",
]

# LAVIS ships the EVA ViT-g weights for 224 px images: the position grid expected by default.
EVA_IMAGE_SIZE = 224
# peft 0.2 wraps MiniGPT-v2's LlamaForCausalLM (attribute llama_model) as base_model.model.
LORA_PREFIX = "llama_model.base_model.model."

_POS_EMBED = "pos_embed"
_POSITION_EMBEDDING = "vision_model.embeddings.position_embedding"
_LN_VISION = {
    "ln_vision.weight": "vision_model.post_layernorm.weight",
    "ln_vision.bias": "vision_model.post_layernorm.bias",
}
_PROJECTOR = ("llama_proj.weight", "llama_proj.bias")
_EVA_TOP = {
    "cls_token": "vision_model.embeddings.class_embedding",
    "patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
}
_EVA_BLOCK = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_MAX_LISTED_PROBLEMS = 20

Shape = list[int]


def eva_key_map(num_layers: int) -> dict[str, str]:
    """EVA key -> Blip2VisionModel key for the tensors that are only renamed.

    ``pos_embed`` (interpolated) and ``q_bias``/``v_bias`` (joined into one qkv bias) are not in it.
    """
    keys = dict(_EVA_TOP)
    for i in range(num_layers):
        keys |= {
            f"blocks.{i}.{eva}": f"vision_model.encoder.layers.{i}.{blip2}"
            for eva, blip2 in _EVA_BLOCK.items()
        }
    return keys


def _qkv_biases(num_layers: int) -> dict[str, tuple[str, str]]:
    return {
        f"vision_model.encoder.layers.{i}.self_attn.qkv.bias": (
            f"blocks.{i}.attn.q_bias",
            f"blocks.{i}.attn.v_bias",
        )
        for i in range(num_layers)
    }


def interpolate_position_embedding(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1 + s*s, C] -> [1, 1 + grid*grid, C] in fp32, as LAVIS' ``interpolate_pos_embed``.

    The CLS row is kept and the s x s grid (any s) resized bicubically (align_corners=False).
    Rows that do not form a square grid after the CLS row raise ``ValueError``.
    """
    pos_embed = pos_embed.float()
    source = _square_side(pos_embed.shape[1] - 1)
    if source is None:
        raise ValueError(
            f"position embeddings {list(pos_embed.shape)}: {pos_embed.shape[1] - 1} rows after "
            "the CLS row are not a square grid"
        )
    if source == grid:
        return pos_embed
    channels = pos_embed.shape[-1]
    cls_row, tokens = pos_embed[:, :1], pos_embed[:, 1:]
    tokens = tokens.reshape(1, source, source, channels).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_row, tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


class MisShaped(BaseModel):
    """A tensor a source holds under the expected name but with another shape than the model's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    found: Shape
    expected: Shape


class SourceReport(BaseModel):
    """What became of each tensor of one source (keys as the source names them)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    files: list[str]
    tensors: int
    used: list[str]
    dropped_by_design: dict[str, str] = {}
    initialised: dict[str, str] = {}
    missing: dict[str, Shape] = {}
    unexpected: dict[str, Shape] = {}
    mis_shaped: list[MisShaped] = []
    ignored_entries: list[str] = []

    def problems(self) -> list[str]:
        """This source's missing, unexpected and mis-shaped tensors, one user-facing line each."""
        return (
            [f"{self.path}: missing {k} (expected shape {s})" for k, s in self.missing.items()]
            + [
                f"{self.path}: unexpected {k} (shape {s}; the model has no such tensor)"
                for k, s in self.unexpected.items()
            ]
            + [
                f"{self.path}: mis-shaped {m.key}: file has {m.found}, model expects {m.expected}"
                for m in self.mis_shaped
            ]
        )


class LoraReport(BaseModel):
    """The LoRA pairs merged into the LLM's weights, and the rank and scale they were merged at."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pairs: int
    r: int
    alpha: float
    scale: float
    targets: list[str]


def _square_side(positions: int) -> int | None:
    """The side of a square grid of ``positions`` cells (at least one), or None if none is."""
    side = math.isqrt(max(positions, 0))
    return side if side >= 1 and side * side == positions else None


class PositionEmbeddingReport(BaseModel):
    """The EVA file's position grid (16x16 for 224 px in LAVIS' file) and the served one.

    Interpolated if they differ.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_grid: int
    target_grid: int
    interpolated: bool


class ParameterCounts(BaseModel):
    """Parameters per stage of the model as served: the LoRA pairs are merged, not counted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vision: int
    projector: int
    llm: int


class PublishedReport(BaseModel):
    """The accounting of one assembly: what became of each source's tensors, and any problem.

    ``config`` is the arch config with the LLM's non-shape hyper-parameters (norm eps, RoPE theta,
    context) as the Llama folder gives them.
    """

    model_config = ConfigDict(extra="forbid")

    config: ModelConfig
    vision: SourceReport
    llm: SourceReport
    checkpoint: SourceReport
    position_embedding: PositionEmbeddingReport
    lora: LoraReport | None
    parameters: ParameterCounts
    errors: list[str] = []

    def problems(self) -> list[str]:
        """Every problem of the assembly; any one of them stops :func:`load_published`."""
        # Config-level errors first: they usually explain the tensor-level ones.
        return [
            *self.errors,
            *self.vision.problems(),
            *self.llm.problems(),
            *self.checkpoint.problems(),
        ]

    @property
    def ok(self) -> bool:
        """Whether the sources can be assembled: no problem at all."""
        return not self.problems()

    def raise_for_problems(self) -> None:
        """Raise a :class:`CheckpointError` listing the first problems, if there are any."""
        problems = self.problems()
        if problems:
            raise CheckpointError("; ".join(_first(problems, "skyeye model inspect --json")))

    def summary(self) -> str:
        """The report as text for ``skyeye model inspect``: per source, then LoRA, then problems."""
        lines = []
        for name, source in (
            ("vision", self.vision),
            ("llm", self.llm),
            ("checkpoint", self.checkpoint),
        ):
            lines.append(
                f"{name:<10} {source.path}: {source.tensors} tensors, {len(source.used)} used, "
                f"{len(source.dropped_by_design)} dropped by design, "
                f"{len(source.missing)} missing, "
                f"{len(source.unexpected)} unexpected, {len(source.mis_shaped)} mis-shaped"
            )
            for reason, count in _count_reasons(source.dropped_by_design).items():
                lines.append(f"           dropped: {count} x {reason}")
            lines += [f"           initialised {k}: {why}" for k, why in source.initialised.items()]
            if source.ignored_entries:
                lines.append(f"           ignored entries: {', '.join(source.ignored_entries)}")
        pos = self.position_embedding
        lines.append(
            f"position embedding: {pos.source_grid}x{pos.source_grid} -> "
            f"{pos.target_grid}x{pos.target_grid}"
            + (" (bicubic)" if pos.interpolated else " (as is)")
        )
        if self.lora:
            lines.append(
                f"LoRA: {self.lora.pairs} pairs merged into {', '.join(self.lora.targets)}, "
                f"r {self.lora.r}, alpha {self.lora.alpha:g}, scale {self.lora.scale:g}"
            )
        counts = self.parameters
        lines.append(
            f"parameters: vision {counts.vision:,}, projector {counts.projector:,}, "
            f"llm {counts.llm:,}"
        )
        problems = self.problems()
        lines.append(f"problems: {len(problems)}" if problems else "problems: none")
        lines += [f"  {p}" for p in _first(problems, "--json")]
        return "\n".join(lines)


def _first(problems: list[str], where_all: str) -> list[str]:
    shown = problems[:_MAX_LISTED_PROBLEMS]
    if len(problems) > len(shown):
        shown.append(f"... and {len(problems) - len(shown)} more (all of them: {where_all})")
    return shown


def _count_reasons(dropped: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in dropped.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _load_pth(path: Path) -> Any:
    # mmap: the tensors stay in the page cache until used, so checking shapes reads almost nothing.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint: {exc}") from exc


def _state_dict(obj: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path}: {what} is not a state dict (names -> tensors)")
    return dict(obj)


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, Shape]:
    return {key: list(t.shape) for key, t in tensors.items()}


def _llm_weight_files(folder: Path) -> list[Path]:
    # The order transformers' from_pretrained prefers, so the files checked are the files loaded.
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            weight_map: dict[str, str] = json.loads((folder / index).read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
    raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or their index")


def _llm_file_shapes(files: list[Path]) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    shapes[key] = list(f.get_slice(key).get_shape())
        else:
            shapes |= _shapes(_state_dict(_load_pth(file), file, "it"))
    return shapes


def _llama_config(folder: Path) -> LlamaConfig:
    try:
        return LlamaConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: no readable Llama config.json: {exc}") from exc


def _with_source_hyperparameters(config: ModelConfig, llama: LlamaConfig) -> ModelConfig:
    # The folder's config.json is what builds the decoder (as in MiniGPT-v2); the model config
    # records its values rather than contradict them. ln_vision is MiniGPT-v2's plain LayerNorm,
    # whose eps no source file records.
    rope = llama.rope_parameters or {}
    llm = config.llm.model_copy(
        update={
            "rms_norm_eps": llama.rms_norm_eps,
            "rope_theta": rope.get("rope_theta", config.llm.rope_theta),
            "max_position_embeddings": llama.max_position_embeddings,
        }
    )
    return config.model_copy(update={"llm": llm, "ln_vision_eps": MINIGPT_V2_LN_VISION_EPS})


def _account(
    path: Path,
    files: list[Path],
    expected: Mapping[str, Shape],
    found: Mapping[str, Shape],
    dropped: Mapping[str, str] | None = None,
    initialised: Mapping[str, str] | None = None,
    ignored_entries: list[str] | None = None,
) -> SourceReport:
    dropped = dict(dropped or {})
    return SourceReport(
        path=str(path),
        files=[str(f) for f in files],
        tensors=len(found),
        used=[k for k, s in expected.items() if found.get(k) == s],
        dropped_by_design=dropped,
        initialised=dict(initialised or {}),
        missing={k: s for k, s in expected.items() if k not in found},
        unexpected={k: s for k, s in found.items() if k not in expected and k not in dropped},
        mis_shaped=[
            MisShaped(key=k, found=found[k], expected=s)
            for k, s in expected.items()
            if k in found and found[k] != s
        ],
        ignored_entries=ignored_entries or [],
    )


@dataclass(frozen=True)
class ExpectedTensors:
    """What the three sources must hold for one config, in their own key names."""

    vision: dict[str, Shape]
    llm: dict[str, Shape]
    # Without ln_vision, which the checkpoint may or may not carry.
    checkpoint: dict[str, Shape]
    ln_vision: dict[str, Shape]
    # LLM weight key -> (lora_A key, lora_B key) in the checkpoint
    lora_pairs: dict[str, tuple[str, str]]
    parameters: ParameterCounts
    # Mapping faults: a model tensor no source fills, a LoRA target matching no weight.
    errors: list[str]


def _eva_grid(config: ModelConfig) -> int:
    """Patches along each side of the position grid LAVIS' EVA file holds (for 224 px)."""
    return EVA_IMAGE_SIZE // config.vision.patch_size


def _source_grid(
    vision: Path, eva: Mapping[str, torch.Tensor], expected: ExpectedTensors, config: ModelConfig
) -> tuple[ExpectedTensors, int, list[str]]:
    """The expected tensors with the file's own position grid, that grid's side, any error.

    Any square grid is interpolated, as MiniGPT-v2 does, so a ``pos_embed`` of the expected
    rank and width is expected at the size the file has. Without one (or with another rank or
    width, reported mis-shaped) the side is that of LAVIS' 224 px file; rows that are not a
    square after the CLS row are an error.
    """
    side = _eva_grid(config)
    pos = eva.get(_POS_EMBED)
    width = config.vision.hidden_size
    if pos is None or pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[2] != width:
        return expected, side, []
    found = _square_side(pos.shape[1] - 1)
    if found is None:
        return (
            expected,
            side,
            [
                f"{vision}: {_POS_EMBED} {list(pos.shape)} has {pos.shape[1] - 1} rows after the "
                "CLS row, not a square grid to interpolate"
            ],
        )
    shapes = {**expected.vision, _POS_EMBED: list(pos.shape)}
    return replace(expected, vision=shapes), found, []


def _eva_tensors(
    config: ModelConfig, target: Mapping[str, Shape]
) -> tuple[dict[str, Shape], set[str], list[str]]:
    """What the EVA file must hold, the vision-model tensors it fills, and the mapping faults."""
    layers, width = config.vision.num_layers, config.vision.hidden_size
    vision: dict[str, Shape] = {}
    filled: set[str] = set()
    errors: list[str] = []
    for eva_key, model_key in eva_key_map(layers).items():
        if model_key in target:
            vision[eva_key] = target[model_key]
            filled.add(model_key)
        else:
            errors.append(f"{model_key} (from EVA {eva_key}) is not a tensor of the vision model")
    vision[_POS_EMBED] = [1, 1 + _eva_grid(config) ** 2, width]
    filled.add(_POSITION_EMBEDDING)
    for model_key, (q_bias, v_bias) in _qkv_biases(layers).items():
        vision[q_bias] = vision[v_bias] = [width]
        filled.add(model_key)
    return vision, filled, errors


def _lora_tensors(
    lora: LoraConfig, llm: Mapping[str, Shape]
) -> tuple[dict[str, tuple[str, str]], dict[str, Shape], list[str]]:
    """The LoRA pair of each targeted LLM weight, the pairs' shapes, and the unmatched targets.

    The pairs are keyed by LLM weight and name the checkpoint's ``(lora_A, lora_B)`` keys.
    """
    pairs: dict[str, tuple[str, str]] = {}
    shapes: dict[str, Shape] = {}
    errors: list[str] = []
    for name in lora.targets:
        pattern = re.compile(rf"^model\.layers\.\d+\.(.+\.)?{re.escape(name)}\.weight$")
        matches = [key for key in llm if pattern.match(key)]
        if not matches:
            errors.append(f"LoRA target {name} matches no weight of the LLM")
        for key in matches:
            stem = LORA_PREFIX + key.removesuffix(".weight")
            pairs[key] = (f"{stem}.lora_A.weight", f"{stem}.lora_B.weight")
            out_features, in_features = llm[key]
            shapes[pairs[key][0]] = [lora.r, in_features]
            shapes[pairs[key][1]] = [out_features, lora.r]
    return pairs, shapes, errors


def expected_tensors(config: ModelConfig, llama: LlamaConfig | None = None) -> ExpectedTensors:
    """Expected names and shapes, from modules built on the meta device (no memory, no files).

    ``llama`` is the Llama folder's config; by default the one ``config`` describes.
    """
    llama = llama or llama_config(config, bos_id=1, eos_id=2, pad_id=0)
    with torch.device("meta"):
        stage = VisionStage(config)
    target = {key: list(t.shape) for key, t in stage.state_dict().items()}
    vision, filled, errors = _eva_tensors(config, target)
    llm = llm_tensor_shapes(llama)
    checkpoint = {key: target[key] for key in _PROJECTOR}
    ln_vision = {key: target[model_key] for key, model_key in _LN_VISION.items()}
    filled.update(_PROJECTOR, _LN_VISION.values())
    pairs: dict[str, tuple[str, str]] = {}
    if config.lora is not None:
        pairs, lora_shapes, lora_errors = _lora_tensors(config.lora, llm)
        checkpoint |= lora_shapes
        errors += lora_errors
    errors += [
        f"vision model tensor {key} {shape} has no source"
        for key, shape in target.items()
        if key not in filled
    ]
    return ExpectedTensors(
        vision=vision,
        llm=llm,
        checkpoint=checkpoint,
        ln_vision=ln_vision,
        lora_pairs=pairs,
        parameters=ParameterCounts(
            vision=sum(p.numel() for p in stage.vision_model.parameters()),
            projector=sum(p.numel() for p in stage.llama_proj.parameters()),
            llm=sum(math.prod(shape) for shape in llm.values()),
        ),
        errors=errors,
    )


@dataclass(frozen=True)
class _Opened:
    """The three sources, memory-mapped, and the accounting of their tensors."""

    llm_dir: Path
    llama: LlamaConfig
    eva: dict[str, torch.Tensor]
    trained: dict[str, torch.Tensor]
    lora_pairs: dict[str, tuple[str, str]]
    report: PublishedReport


def _lora_errors(
    expected: ExpectedTensors, trained: Mapping[str, torch.Tensor], config: ModelConfig, path: Path
) -> list[str]:
    """LoRA pairs the checkpoint holds only half of, and ranks other than the arch config's."""
    errors = []
    for a_key, b_key in expected.lora_pairs.values():
        for present, absent in ((a_key, b_key), (b_key, a_key)):
            if present in trained and absent not in trained:
                errors.append(
                    f"{path}: LoRA pair incomplete: {present} {list(trained[present].shape)} "
                    f"has no {absent} (expected {expected.checkpoint[absent]})"
                )
    if config.lora is not None:
        # A holds [r, in], B holds [out, r]; a mis-shaped tensor is also reported on its own.
        ranks = sorted(
            {trained[a].shape[0] for a, _ in expected.lora_pairs.values() if a in trained}
            | {trained[b].shape[-1] for _, b in expected.lora_pairs.values() if b in trained}
        )
        if ranks and ranks != [config.lora.r]:
            errors.append(f"{path}: LoRA rank {ranks}; the arch config says r={config.lora.r}")
    return errors


def _vision_report(
    vision: Path, eva: Mapping[str, torch.Tensor], expected: ExpectedTensors, layers: int
) -> SourceReport:
    """The EVA file's accounting: the block past the model's ``layers`` is dropped by design."""
    dropped = {
        key: f"EVA block {layers} (MiniGPT-v2 builds {layers} blocks and drops it)"
        for key in eva
        if key.startswith(f"blocks.{layers}.")
    }
    return _account(vision, [vision], expected.vision, _shapes(eva), dropped)


def _llm_report(llm_dir: Path, expected: ExpectedTensors) -> SourceReport:
    """The Llama folder's accounting, from the shapes of the weight files it would load."""
    files = _llm_weight_files(llm_dir)
    found = _llm_file_shapes(files)
    recomputed = {
        key: "rotary table, recomputed from the config"
        for key in found
        if is_recomputed_llm_key(key)
    }
    return _account(llm_dir, files, expected.llm, found, recomputed)


def _checkpoint_report(
    checkpoint: Path,
    saved: Mapping[Any, Any],
    trained: Mapping[str, torch.Tensor],
    expected: ExpectedTensors,
) -> SourceReport:
    """The SkyEyeGPT checkpoint's accounting; without ``ln_vision`` it is reported initialised."""
    expected_trained = dict(expected.checkpoint)
    initialised: dict[str, str] = {}
    if any(key in trained for key in expected.ln_vision):
        expected_trained |= expected.ln_vision
    else:
        initialised = {
            "ln_vision.weight": "not in the checkpoint: ones (LayerNorm init; frozen in training)",
            "ln_vision.bias": "not in the checkpoint: zeros (LayerNorm init; frozen in training)",
        }
    return _account(
        checkpoint,
        [checkpoint],
        expected_trained,
        _shapes(trained),
        initialised=initialised,
        ignored_entries=sorted(str(k) for k in saved if k != "model"),
    )


def _lora_report(config: ModelConfig, expected: ExpectedTensors) -> LoraReport | None:
    """How the LoRA pairs are merged; ``None`` when the arch config has no adapters."""
    lora = config.lora
    if lora is None:
        return None
    return LoraReport(
        pairs=len(expected.lora_pairs),
        r=lora.r,
        alpha=lora.alpha,
        scale=lora.scale,
        targets=list(lora.targets),
    )


def _open(vision: Path, llm_dir: Path, checkpoint: Path, arch: ModelConfig) -> _Opened:
    """Read the three sources (memory-mapped) and account for every tensor against ``arch``."""
    eva = _state_dict(_load_pth(vision), vision, "the EVA ViT file")
    saved = _load_pth(checkpoint)
    if not isinstance(saved, Mapping) or "model" not in saved:
        raise CheckpointError(f"{checkpoint}: no 'model' entry (a MiniGPT-v2 checkpoint has one)")
    trained = _state_dict(saved["model"], checkpoint, "its 'model' entry")
    llama = _llama_config(llm_dir)
    config = _with_source_hyperparameters(arch, llama)
    expected, source_grid, grid_errors = _source_grid(
        vision, eva, expected_tensors(config, llama), config
    )
    vision_report = _vision_report(vision, eva, expected, config.vision.num_layers)
    llm_report = _llm_report(llm_dir, expected)
    checkpoint_report = _checkpoint_report(checkpoint, saved, trained, expected)
    report = PublishedReport(
        config=config,
        vision=vision_report,
        llm=llm_report,
        checkpoint=checkpoint_report,
        position_embedding=PositionEmbeddingReport(
            source_grid=source_grid,
            target_grid=config.vision.grid_size,
            interpolated=source_grid != config.vision.grid_size,
        ),
        lora=_lora_report(config, expected),
        parameters=expected.parameters,
        errors=llm_config_mismatches(arch, llama, "arch config")
        + grid_errors
        + expected.errors
        + _lora_errors(expected, trained, config, checkpoint),
    )
    return _Opened(llm_dir, llama, eva, trained, expected.lora_pairs, report)


def inspect_published(
    vision: Path, llm_dir: Path, checkpoint: Path, arch_config: ModelConfig | None = None
) -> PublishedReport:
    """Names and shapes of the three sources against the model: no tensor data is read.

    Unreadable files raise :class:`CheckpointError`; tensor-level problems are in the report.
    """
    arch = arch_config or ModelConfig.published()
    return _open(Path(vision), Path(llm_dir), Path(checkpoint), arch).report


@dataclass(frozen=True)
class PublishedModel:
    """The assembled model; ``config`` describes it as served (LoRA already merged)."""

    config: ModelConfig
    vision: VisionStage
    llm: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    report: PublishedReport

    def encoder(self) -> VisionEncoder:
        """The assembled vision stage as the serving path's stage 1, sharing its weights."""
        return VisionEncoder(self.config, self.vision)

    def decoder(self, *, double_bos: bool = False) -> TextDecoder:
        """The assembled Llama and tokenizer as the serving path's stage 2, sharing its weights.

        ``double_bos`` starts each prompt with two BOS tokens, as MiniGPT-v2's evaluation does
        (see :class:`TextDecoder`).
        """
        return TextDecoder(self.config, self.llm, self.tokenizer, double_bos=double_bos)


def _vision_state(opened: _Opened, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    config = opened.report.config
    eva, trained = opened.eva, opened.trained
    state = {
        model_key: eva[k].to(dtype)
        for k, model_key in eva_key_map(config.vision.num_layers).items()
    }
    for model_key, (q_key, v_key) in _qkv_biases(config.vision.num_layers).items():
        q_bias = eva[q_key]
        # EVA's attention has no key bias; it feeds F.linear cat(q_bias, zeros, v_bias).
        state[model_key] = torch.cat([q_bias, torch.zeros_like(q_bias), eva[v_key]]).to(dtype)
    state[_POSITION_EMBEDDING] = interpolate_position_embedding(
        eva[_POS_EMBED], config.vision.grid_size
    ).to(dtype)
    width = config.vision.hidden_size
    # ln_vision stays fp32 (MiniGPT-v2 runs it in fp32 whatever the tower's precision).
    defaults = {"ln_vision.weight": torch.ones(width), "ln_vision.bias": torch.zeros(width)}
    for key, model_key in _LN_VISION.items():
        state[model_key] = trained[key].float() if key in trained else defaults[key]
    state |= {key: trained[key].to(dtype) for key in _PROJECTOR}
    return state


def _merge_lora(llm: LlamaForCausalLM, opened: _Opened) -> None:
    lora = opened.report.config.lora
    if lora is None:
        return
    with torch.no_grad():
        for weight_key, (a_key, b_key) in opened.lora_pairs.items():
            weight = llm.get_parameter(weight_key)
            delta = opened.trained[b_key].float() @ opened.trained[a_key].float()
            # Summed in fp32, rounded once to the serving dtype.
            weight.copy_((weight.float() + lora.scale * delta).to(weight.dtype))


def load_published(
    vision: Path,
    llm_dir: Path,
    checkpoint: Path,
    arch_config: ModelConfig | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> PublishedModel:
    """Assemble the model; any problem of the report is a :class:`CheckpointError`."""
    arch = arch_config or ModelConfig.published()
    opened = _open(Path(vision), Path(llm_dir), Path(checkpoint), arch)
    opened.report.raise_for_problems()
    dtype = dtype or default_dtype(device)
    config = opened.report.config
    with torch.device("meta"):
        stage = VisionStage(config)
    stage.load_state_dict(_vision_state(opened, dtype), strict=True, assign=True)
    stage.vision_model.post_layernorm.float()
    llm, tokenizer = load_hf_llm(opened.llm_dir, opened.llama, dtype)
    _merge_lora(llm, opened)
    return PublishedModel(
        config=config.model_copy(update={"lora": None}),
        vision=stage.to(device).eval(),
        # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to), so the stubs
        # see the unbound signature and take ``device`` for ``self``
        llm=llm.to(device),  # type: ignore[arg-type]
        tokenizer=tokenizer,
        report=opened.report,
    )


def convert_published(
    vision: Path,
    llm_dir: Path,
    checkpoint: Path,
    out_dir: Path,
    arch_config: ModelConfig | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> PublishedReport:
    """Assemble the published model and save it as a SkyEye model folder at ``out_dir``.

    The folder appears complete or not at all (written beside it, then renamed into place).
    """
    out_dir = Path(out_dir)
    # Checked before the minutes of assembly too; the rename below settles any race.
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder")
    model = load_published(vision, llm_dir, checkpoint, arch_config, device="cpu", dtype=dtype)
    origin = {
        "builder": "published",
        "vision": str(vision),
        "llm": str(llm_dir),
        "checkpoint": str(checkpoint),
        "lora_merged": model.report.lora.model_dump() if model.report.lora else None,
        "ln_vision": "initialised" if model.report.checkpoint.initialised else "checkpoint",
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent)
    )
    try:
        save_model(staging, model.config, model.vision, model.llm, model.tokenizer, origin)
        try:
            os.rename(staging, out_dir)
        except OSError as exc:
            raise FileExistsError(f"{out_dir} exists and is not an empty folder") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model.report
