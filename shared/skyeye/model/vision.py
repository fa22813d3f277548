"""Stage 1: pixels -> image embeddings the decoder splices into its prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skyeye.model import checkpoint
from skyeye.model.architecture import VisionStage
from skyeye.model.config import ModelConfig

__all__ = ["CLIP_MEAN", "CLIP_STD", "VisionEncoder", "preprocess"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_rgb(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"images must be HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}")
    # As MiniGPT-v2's Image.open(...).convert("RGB"): gray is replicated, alpha is dropped.
    return Image.fromarray(image).convert("RGB")


def preprocess(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """MiniGPT-v2's eval transform: bicubic resize to a square (no crop), /255, CLIP normalise."""
    size = (image_size, image_size)
    resized = np.stack(
        [np.asarray(_to_rgb(im).resize(size, Image.Resampling.BICUBIC)) for im in images]
    )
    pixels = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


class VisionEncoder:
    """Stage 1 of the served model: turns tiles and frames into the image embeddings it decodes."""

    def __init__(self, config: ModelConfig, stage: VisionStage) -> None:
        self.config = config
        self.stage = stage

    @classmethod
    def load(
        cls, path: Path, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> VisionEncoder:
        """The vision stage from a model folder, in ``dtype`` or else the device's default."""
        config, stage = checkpoint.load_vision(
            path, device, dtype or checkpoint.default_dtype(device)
        )
        return cls(config, stage)

    def encode(self, images: list[np.ndarray]) -> torch.Tensor:
        """(N, max_image_tokens, llm hidden) float32 on the CPU, all images in one forward."""
        if not images:
            raise ValueError("no images to encode")
        pixels = preprocess(images, self.config.vision.image_size)
        weight = self.stage.llama_proj.weight
        with torch.inference_mode():
            embeds = self.stage(pixels.to(device=weight.device, dtype=weight.dtype))
        return embeds.float().cpu()
