"""The tiny seeded model: real architecture and code path, random weights, for tests and benches."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from skyeye.model.architecture import VisionStage, llama_config
from skyeye.model.checkpoint import CONFIG_FILE, read_manifest, save_model
from skyeye.model.config import ModelConfig
from skyeye.model.vocabulary import tiny_tokenizer

__all__ = ["build_tiny_model"]

# Module init draws from torch's global generator; two threads seeding it at once would
# interleave their draws and break the "same seed, same weights" promise.
_SEEDING = threading.Lock()


def _origin(seed: int) -> dict[str, object]:
    return {"builder": "tiny", "seed": seed}


def _write_tiny(folder: Path, seed: int) -> None:
    config = ModelConfig.tiny()
    tokenizer = tiny_tokenizer()
    # Seeded inside fork_rng so that building never disturbs the caller's RNG.
    with _SEEDING, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision = VisionStage(config)
        llm = LlamaForCausalLM(
            llama_config(
                config,
                bos_id=tokenizer.bos_token_id,
                eos_id=tokenizer.eos_token_id,
                pad_id=tokenizer.pad_token_id,
            )
        )
    save_model(folder, config, vision, llm, tokenizer, origin=_origin(seed))


def build_tiny_model(path: Path, seed: int = 0) -> None:
    """Build the tiny model into ``path``; the folder appears complete or not at all.

    It is written to a sibling temporary folder and renamed into place, so a crash leaves no half
    folder and concurrent builders race harmlessly: the loser finds the winner's identical model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        _write_tiny(staging, seed)
        try:
            # rename(2) is atomic and replaces only a missing or empty folder.
            os.rename(staging, path)
        except OSError as exc:
            if not (path / CONFIG_FILE).is_file():
                raise FileExistsError(f"{path} exists and is not an empty folder") from exc
            existing = read_manifest(path).origin
            if existing != _origin(seed):
                raise FileExistsError(f"{path} already holds another model: {existing}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
