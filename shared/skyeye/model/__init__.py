"""SkyEyeGPT (MiniGPT-v2) inference in two stages: :class:`VisionEncoder`, :class:`TextDecoder`.

Names are resolved lazily so that ``skyeye.model.prompts`` and ``skyeye.model.answers`` can be
used by processes that never load torch or transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skyeye.model.checkpoint import CheckpointError
    from skyeye.model.config import ModelConfig
    from skyeye.model.decoder import TextDecoder
    from skyeye.model.factory import build_tiny_model
    from skyeye.model.vision import VisionEncoder

__all__ = [
    "CheckpointError",
    "ModelConfig",
    "TextDecoder",
    "VisionEncoder",
    "build_tiny_model",
]

_HOMES = {
    "CheckpointError": "skyeye.model.checkpoint",
    "ModelConfig": "skyeye.model.config",
    "TextDecoder": "skyeye.model.decoder",
    "VisionEncoder": "skyeye.model.vision",
    "build_tiny_model": "skyeye.model.factory",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
