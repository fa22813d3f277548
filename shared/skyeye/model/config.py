"""Dimensions of a MiniGPT-v2-shaped model: EVA-style ViT, 1x4 token merge, Llama decoder."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from skyeye.model.vocabulary import tiny_vocabulary

__all__ = ["MINIGPT_V2_LN_VISION_EPS", "LlmConfig", "LoraConfig", "ModelConfig", "VisionConfig"]

# MiniGPT-v2 builds ln_vision as nn.LayerNorm(num_features): torch's default eps.
MINIGPT_V2_LN_VISION_EPS = 1e-5


class VisionConfig(BaseModel):
    """The ViT (EVA ViT-g/14 in the published model); ``layer_norm_eps`` is its blocks' norms'.

    ln_vision, the separate LayerNorm after it, has its own eps (:attr:`ModelConfig.ln_vision_eps`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(448, gt=0)
    patch_size: int = Field(14, gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    mlp_hidden_size: int = Field(gt=0)
    layer_norm_eps: float = Field(1e-6, gt=0)

    @property
    def grid_size(self) -> int:
        """Patches along each side of the square input (32 at 448 px, patch 14)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image before the merge, not counting the CLS token."""
        return self.grid_size**2

    @model_validator(mode="after")
    def _consistent(self) -> VisionConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision hidden_size {self.hidden_size} not divisible by heads")
        return self


class LlmConfig(BaseModel):
    """The Llama decoder (Llama-2-7b-chat in the published model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int = Field(4096, gt=0)
    rms_norm_eps: float = Field(1e-5, gt=0)
    rope_theta: float = Field(10000.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> LlmConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"llm hidden_size {self.hidden_size} not divisible by heads")
        return self


class LoraConfig(BaseModel):
    """The LoRA adapters a published checkpoint carries for the LLM (peft: W + alpha/r * B @ A)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    r: int = Field(64, gt=0)
    alpha: float = Field(16.0, gt=0)
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    @property
    def scale(self) -> float:
        """The factor on ``B @ A`` when the adapters are merged into the LLM's weights."""
        return self.alpha / self.r


class ModelConfig(BaseModel):
    """The whole model's shape, as ``skyeye.json`` stores it; a folder's tensors must match it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vision: VisionConfig
    ln_vision_eps: float = Field(
        MINIGPT_V2_LN_VISION_EPS,
        gt=0,
        description="eps of ln_vision, the LayerNorm after the tower; MiniGPT-v2's is a plain "
        "LayerNorm (1e-5), not the tower's own norms' 1e-6. Folders saved before this field "
        "existed ran it at the tower's layer_norm_eps, and load so (checkpoint.ModelManifest)",
    )
    merge: int = Field(4, gt=0, description="consecutive patches of a row merged into one token")
    llm: LlmConfig
    lora: LoraConfig | None = Field(
        None,
        description="LoRA adapters to merge when assembling published weights; a model folder "
        "holds merged weights, so its config has none",
    )

    @property
    def max_image_tokens(self) -> int:
        """LLM tokens one image becomes (256 at 448 px, patch 14, merge 4)."""
        return self.vision.num_patches // self.merge

    @property
    def projector_in(self) -> int:
        """Width of a merged image token, the input of ``llama_proj``."""
        return self.vision.hidden_size * self.merge

    @model_validator(mode="after")
    def _merge_within_rows(self) -> ModelConfig:
        # The merge is a plain view over row-major patches; if the grid width were not a multiple
        # of it, one merged token would straddle two rows of the image.
        if self.vision.grid_size % self.merge:
            raise ValueError(
                f"merge {self.merge} does not divide the patch grid width {self.vision.grid_size}"
            )
        return self

    @classmethod
    def tiny(cls) -> ModelConfig:
        """A few-MB model with the real preprocessing (448 px, patch 14) and the real 256 tokens."""
        return cls(
            vision=VisionConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_hidden_size=128),
            llm=LlmConfig(
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                intermediate_size=172,
                vocab_size=len(tiny_vocabulary()),
            ),
        )

    @classmethod
    def skyeye_tiny(cls) -> ModelConfig:
        """The trained skyeye-tiny: small enough to serve on a CPU, real 448/14/1x4 path.

        A 96-wide, 3-layer tower read an object's box from its patch tokens only to within about
        2 (0-100 scale), too coarse for the world's small objects; this one reads it to within
        0.6 and is trained alone on a GPU (docs/training-log.md, round 7). Its ln_vision was
        trained at the tower's eps (1e-6), as every model before ``ln_vision_eps`` existed.
        """
        return cls(
            vision=VisionConfig(hidden_size=192, num_layers=6, num_heads=6, mlp_hidden_size=768),
            ln_vision_eps=1e-6,
            llm=LlmConfig(
                hidden_size=128,
                num_layers=3,
                num_heads=4,
                intermediate_size=344,
                vocab_size=len(tiny_vocabulary()),
            ),
        )

    @classmethod
    def published(cls) -> ModelConfig:
        """EVA ViT-g/14 without its last block + Llama-2-7B, as SkyEyeGPT/MiniGPT-v2 ship them."""
        return cls(
            vision=VisionConfig(
                hidden_size=1408, num_layers=39, num_heads=16, mlp_hidden_size=6144
            ),
            llm=LlmConfig(
                hidden_size=4096,
                num_layers=32,
                num_heads=32,
                intermediate_size=11008,
                vocab_size=32000,
            ),
            lora=LoraConfig(),
        )
