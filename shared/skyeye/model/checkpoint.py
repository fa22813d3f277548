"""The SkyEye model folder: save, and load with every tensor checked.

Files::

    skyeye.json          {"format_version": 1, "config": ModelConfig, "origin": {...}}
    vision.safetensors   vision_model.* (ViT incl. post_layernorm = ln_vision), llama_proj.*
    llm/                 a Hugging Face Llama folder: config.json, model.safetensors (or shards
                         + model.safetensors.index.json), tokenizer files

Loading never relies on ``strict=False``: the file's tensor names and shapes are compared with the
modules the config builds, and any missing, unexpected or mis-shaped tensor is a
:class:`CheckpointError` naming the key and both shapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from skyeye.model.architecture import VisionStage
from skyeye.model.config import ModelConfig, VisionConfig

# Per-load progress bars would fill every replica's and CLI's output with noise.
hf_logging.disable_progress_bar()

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "LLM_DIR",
    "VISION_FILE",
    "CheckpointError",
    "ModelManifest",
    "check_tensors",
    "default_dtype",
    "is_recomputed_llm_key",
    "llm_config_mismatches",
    "llm_tensor_shapes",
    "load_hf_llm",
    "load_llm",
    "load_tokenizer",
    "load_vision",
    "read_manifest",
    "save_model",
]

FORMAT_VERSION = 1
CONFIG_FILE = "skyeye.json"
VISION_FILE = "vision.safetensors"
LLM_DIR = "llm"

_LLM_WEIGHTS = "model.safetensors"
_LLM_INDEX = "model.safetensors.index.json"
# Old Llama conversions stored the rotary tables; they are recomputed from the config.
_RECOMPUTED_LLM_KEYS = re.compile(r"\.rotary_emb\.inv_freq$")


def default_dtype(device: str) -> torch.dtype:
    """The precision a model loads in when the caller names none: bf16 on a GPU, fp32 on the CPU."""
    # bf16 on GPU: MiniGPT-v2 used fp16, but bf16 has fp32's range, so the 39-block ViT and the
    # 7B decoder cannot overflow; on CPU low-precision kernels are slow, so stay in fp32 there.
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


class CheckpointError(ValueError):
    """A model folder that does not match what its config describes."""


class ModelManifest(BaseModel):
    """Contents of ``skyeye.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int
    config: ModelConfig
    origin: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _ln_vision_eps_of_older_folders(cls, data: Any) -> Any:
        """A config written before ``ln_vision_eps`` existed gets the eps its ln_vision ran at.

        That was the tower's ``layer_norm_eps`` (skyeye-tiny was trained so); the field's
        default, MiniGPT-v2's 1e-5, would change such a model's image tokens.
        """
        if not isinstance(data, dict):
            return data
        config = data.get("config")
        if not isinstance(config, dict) or "ln_vision_eps" in config:
            return data
        vision = config.get("vision")
        eps = VisionConfig.model_fields["layer_norm_eps"].default
        if isinstance(vision, dict):
            eps = vision.get("layer_norm_eps", eps)
        return {**data, "config": {**config, "ln_vision_eps": eps}}


def read_manifest(path: Path) -> ModelManifest:
    """The folder's ``skyeye.json``; a missing or invalid one, or another format version, raises."""
    file = path / CONFIG_FILE
    try:
        manifest = ModelManifest.model_validate_json(file.read_bytes())
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CheckpointError(f"{path} is not a SkyEye model folder: no {CONFIG_FILE}") from exc
    except ValidationError as exc:
        raise CheckpointError(f"{file} is invalid: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format_version {manifest.format_version}; this code reads {FORMAT_VERSION}"
        )
    return manifest


def check_tensors(
    expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]], source: str
) -> None:
    """Raise unless ``found`` has exactly the keys of ``expected`` with the same shapes."""
    problems = [
        f"missing {key} (expected shape {list(shape)})"
        for key, shape in expected.items()
        if key not in found
    ]
    problems += [
        f"unexpected {key} (shape {list(shape)}; the model has no such tensor)"
        for key, shape in found.items()
        if key not in expected
    ]
    problems += [
        f"mis-shaped {key}: file has {list(found[key])}, model expects {list(shape)}"
        for key, shape in expected.items()
        if key in found and list(found[key]) != list(shape)
    ]
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(t.shape) for key, t in module.state_dict().items()}


def _file_shapes(files: Sequence[Path]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                shapes[key] = list(f.get_slice(key).get_shape())
    return shapes


def save_model(
    path: Path,
    config: ModelConfig,
    vision: VisionStage,
    llm: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    origin: Mapping[str, Any] | None = None,
) -> None:
    """Write a complete model folder (the caller makes it appear atomically if it needs to)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {key: t.detach().contiguous().cpu() for key, t in vision.state_dict().items()}
    save_file(tensors, str(path / VISION_FILE), metadata={"format": "pt"})
    llm.save_pretrained(path / LLM_DIR)
    tokenizer.save_pretrained(path / LLM_DIR)
    manifest = ModelManifest(
        format_version=FORMAT_VERSION, config=config, origin=dict(origin or {})
    )
    # Written last: its presence is what marks the folder complete.
    (path / CONFIG_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")


def load_vision(path: Path, device: str, dtype: torch.dtype) -> tuple[ModelConfig, VisionStage]:
    """The folder's vision stage, every tensor checked, in eval mode (ln_vision kept in fp32)."""
    config = read_manifest(path).config
    with torch.device("meta"):
        stage = VisionStage(config)
    file = path / VISION_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: missing {VISION_FILE}")
    check_tensors(_shapes(stage), _file_shapes([file]), str(file))
    with safe_open(str(file), framework="pt", device="cpu") as f:
        tensors = {key: f.get_tensor(key).to(dtype) for key in f.keys()}  # noqa: SIM118
    stage.load_state_dict(tensors, strict=True, assign=True)
    # ln_vision keeps fp32 weights in MiniGPT-v2 even when the tower runs in fp16.
    stage.vision_model.post_layernorm.float()
    return config, stage.to(device).eval()


def _llm_weight_files(folder: Path) -> list[Path]:
    index = folder / _LLM_INDEX
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / _LLM_WEIGHTS).is_file():
        return [folder / _LLM_WEIGHTS]
    raise CheckpointError(f"{folder}: no {_LLM_WEIGHTS} or {_LLM_INDEX}")


def llm_config_mismatches(
    config: ModelConfig, llama: LlamaConfig, config_name: str = CONFIG_FILE
) -> list[str]:
    """The dimensions on which a Hugging Face Llama config contradicts ``config.llm``."""
    llm = config.llm
    pairs = {
        "hidden_size": (llm.hidden_size, llama.hidden_size),
        "num_hidden_layers": (llm.num_layers, llama.num_hidden_layers),
        "num_attention_heads": (llm.num_heads, llama.num_attention_heads),
        "intermediate_size": (llm.intermediate_size, llama.intermediate_size),
        "vocab_size": (llm.vocab_size, llama.vocab_size),
    }
    return [f"{k}: {config_name} says {a}, llm says {b}" for k, (a, b) in pairs.items() if a != b]


def llm_tensor_shapes(llama: LlamaConfig) -> dict[str, list[int]]:
    """The tensors a Llama folder must hold for ``llama`` (built on meta: no memory)."""
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(llama)
    expected = _shapes(skeleton)
    if llama.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    return expected


def is_recomputed_llm_key(key: str) -> bool:
    """Whether a Llama tensor is one that old conversions stored but the config recomputes."""
    return _RECOMPUTED_LLM_KEYS.search(key) is not None


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The Llama folder's tokenizer; one that cannot load raises, naming the files it found."""
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, ImportError) as exc:
        files = sorted(p.name for p in folder.glob("tokenizer*"))
        hint = (
            " Only a SentencePiece tokenizer.model is there and the sentencepiece package is not"
            " installed: add the tokenizer.json that Hugging Face's Llama-2 folders ship."
            if "tokenizer.model" in files and "tokenizer.json" not in files
            else ""
        )
        raise CheckpointError(
            f"{folder}: cannot load the tokenizer (files: {files or 'none'}): {exc}.{hint}"
        ) from exc


def load_hf_llm(
    folder: Path, llama: LlamaConfig, dtype: torch.dtype
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A Llama folder whose tensors were already checked, on the CPU, in eval mode."""
    llm = LlamaForCausalLM.from_pretrained(folder, config=llama, dtype=dtype)
    tokenizer = load_tokenizer(folder)
    if len(tokenizer) > llama.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens, the model only {llama.vocab_size}"
        )
    # A chat folder's generation_config.json (Llama-2-chat: sampling, top_p 0.9) would otherwise
    # fill in whatever the caller leaves unset; decoding here is decided by the caller alone.
    llm.generation_config = GenerationConfig(
        bos_token_id=llama.bos_token_id,
        eos_token_id=llama.eos_token_id,
        pad_token_id=llama.pad_token_id,
    )
    return llm.eval(), tokenizer


def load_llm(
    path: Path, device: str, dtype: torch.dtype
) -> tuple[ModelConfig, LlamaForCausalLM, PreTrainedTokenizerBase]:
    """The folder's language stage and tokenizer, config and every tensor checked, in eval mode."""
    config = read_manifest(path).config
    folder = path / LLM_DIR
    llama_config = LlamaConfig.from_pretrained(folder)
    wrong = llm_config_mismatches(config, llama_config)
    if wrong:
        raise CheckpointError(f"{folder / 'config.json'}: " + "; ".join(wrong))
    found = {
        key: shape
        for key, shape in _file_shapes(_llm_weight_files(folder)).items()
        if not is_recomputed_llm_key(key)
    }
    check_tensors(llm_tensor_shapes(llama_config), found, str(folder))
    llm, tokenizer = load_hf_llm(folder, llama_config, dtype)
    # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to), so the stubs
    # see the unbound signature and take ``device`` for ``self``
    return config, llm.to(device), tokenizer  # type: ignore[arg-type]
