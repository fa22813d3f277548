"""The torch modules of both stages, built from a :class:`ModelConfig`.

Parameter names are the checkpoint's names: the vision stage's state dict is exactly what
``vision.safetensors`` holds (``vision_model.*`` as transformers' BLIP-2 converter names the EVA
tower and ``ln_vision``, ``llama_proj.*`` as MiniGPT-v2 names the projector).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import Blip2VisionConfig, Blip2VisionModel, LlamaConfig

from skyeye.model.config import ModelConfig

__all__ = ["VisionStage", "blip2_vision_config", "llama_config", "merge_patches"]


def merge_patches(patches: torch.Tensor, merge: int) -> torch.Tensor:
    """(B, n, C) row-major patch tokens -> (B, n/merge, C*merge).

    A plain view, as MiniGPT-v2 does it: each output token concatenates ``merge`` horizontally
    consecutive patches of one row (not a 2x2 block).
    """
    batch, n, channels = patches.shape
    return patches.reshape(batch, n // merge, channels * merge)


def blip2_vision_config(config: ModelConfig) -> Blip2VisionConfig:
    """The EVA tower's shape as transformers' BLIP-2 vision model takes it (qkv bias, GELU)."""
    vision = config.vision
    return Blip2VisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.mlp_hidden_size,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_act="gelu",
        layer_norm_eps=vision.layer_norm_eps,
        qkv_bias=True,
        # The default 1e-10 expects EVA weights to be loaded; from scratch it leaves the tower dead.
        initializer_range=0.02,
    )


class VisionStage(nn.Module):
    """Pixels -> LLM-ready image tokens: ViT, ln_vision (fp32), drop CLS, 1x4 merge, llama_proj."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.merge = config.merge
        self.vision_model = Blip2VisionModel(blip2_vision_config(config))
        # post_layernorm is ln_vision; BLIP-2 builds it with the tower's eps, MiniGPT-v2 with
        # its own. Set on the module, so whatever calls it (training too) uses the same eps.
        self.vision_model.post_layernorm.eps = config.ln_vision_eps
        self.llama_proj = nn.Linear(config.projector_in, config.llm.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised pixels (B, 3, H, W) -> image tokens (B, n, LLM hidden size)."""
        tower = self.vision_model
        dtype = tower.embeddings.patch_embedding.weight.dtype
        hidden = tower.encoder(inputs_embeds=tower.embeddings(pixel_values.to(dtype)))
        hidden = hidden.last_hidden_state
        # MiniGPT-v2's ln_vision runs in fp32 whatever the tower's precision, then casts back.
        ln = tower.post_layernorm
        hidden = F.layer_norm(
            hidden.float(), ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps
        ).to(dtype)
        tokens = merge_patches(hidden[:, 1:, :], self.merge)
        return self.llama_proj(tokens.to(self.llama_proj.weight.dtype))


def llama_config(config: ModelConfig, *, bos_id: int, eos_id: int, pad_id: int) -> LlamaConfig:
    """The language stage's Llama shape, with the tokenizer's special ids and untied embeddings."""
    llm = config.llm
    return LlamaConfig(
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_heads,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        # Fan-in scale for from-scratch weights. Llama's 0.02 suits 4096-wide layers; at the tiny
        # model's width it leaves the decoder nearly blind to its context (every prompt, every
        # image, the same answer), which would hide prompt-assembly bugs.
        initializer_range=llm.hidden_size**-0.5,
    )
