"""MiniGPT-v2's vision path written out from its own code, on weights with EVA's key names.

Follows LAVIS ``eva_vit.py`` (``interpolate_pos_embed``, ``Attention``, ``Block``) and MiniGPT-v2's
``encode_img`` (``ln_vision`` in fp32, drop CLS, 4 row neighbours per token, ``llama_proj``), so
that the package's Blip2VisionModel-based stage can be checked against it.
"""

from collections.abc import Mapping

import torch
from torch.nn import functional as F

from skyeye.model.architecture import VisionStage
from skyeye.model.config import ModelConfig

_BLOCK_NAMES = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.qkv": "attn.qkv",
    "self_attn.projection": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def stage_to_eva(stage: VisionStage) -> dict[str, torch.Tensor]:
    """A stage's weights under EVA / MiniGPT-v2 names (the inverse of the loader's mapping)."""
    w = {k: v.detach() for k, v in stage.state_dict().items()}
    eva = {
        "cls_token": w["vision_model.embeddings.class_embedding"],
        "pos_embed": w["vision_model.embeddings.position_embedding"],
        "patch_embed.proj.weight": w["vision_model.embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": w["vision_model.embeddings.patch_embedding.bias"],
        "ln_vision.weight": w["vision_model.post_layernorm.weight"],
        "ln_vision.bias": w["vision_model.post_layernorm.bias"],
        "llama_proj.weight": w["llama_proj.weight"],
        "llama_proj.bias": w["llama_proj.bias"],
    }
    prefix = "vision_model.encoder.layers."
    for key, value in w.items():
        if not key.startswith(prefix):
            continue
        index, rest = key.removeprefix(prefix).split(".", 1)
        if rest == "self_attn.qkv.bias":
            q_bias, k_bias, v_bias = value.chunk(3)
            assert not k_bias.any(), "EVA has no key bias"
            eva[f"blocks.{index}.attn.q_bias"] = q_bias
            eva[f"blocks.{index}.attn.v_bias"] = v_bias
            continue
        module, param = rest.rsplit(".", 1)
        eva[f"blocks.{index}.{_BLOCK_NAMES[module]}.{param}"] = value
    return eva


def lavis_interpolate_pos_embed(pos_embed: torch.Tensor, new_size: int) -> torch.Tensor:
    """LAVIS ``interpolate_pos_embed`` for one extra (CLS) token."""
    pos_embed_checkpoint = pos_embed.float()
    embedding_size = pos_embed_checkpoint.shape[-1]
    num_extra_tokens = 1
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    if orig_size == new_size:
        return pos_embed_checkpoint
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = F.interpolate(
        pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False
    )
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


def eva_reference(
    w: Mapping[str, torch.Tensor], config: ModelConfig, pixels: torch.Tensor
) -> torch.Tensor:
    """Image tokens for ``pixels`` from EVA-named weights (+ ``ln_vision.*``, ``llama_proj.*``).

    As MiniGPT-v2 builds the ViT with ``config.vision.num_layers`` blocks, any further block in
    ``w`` is ignored.
    """
    v = config.vision
    heads, width = v.num_heads, v.hidden_size
    x = F.conv2d(
        pixels, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=v.patch_size
    )
    x = x.flatten(2).transpose(1, 2)
    cls = w["cls_token"].expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + lavis_interpolate_pos_embed(w["pos_embed"], v.grid_size)
    batch, n, _ = x.shape
    for i in range(v.num_layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), w[p + "norm1.weight"], w[p + "norm1.bias"], 1e-6)
        q_bias = w[p + "attn.q_bias"]
        qkv_bias = torch.cat([q_bias, torch.zeros_like(w[p + "attn.v_bias"]), w[p + "attn.v_bias"]])
        qkv = F.linear(h, w[p + "attn.qkv.weight"], qkv_bias)
        q, k, val = qkv.reshape(batch, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (width // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (attn @ val).transpose(1, 2).reshape(batch, n, width)
        x = x + F.linear(h, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), w[p + "norm2.weight"], w[p + "norm2.bias"], 1e-6)
        h = F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
    x = F.layer_norm(x.float(), (width,), w["ln_vision.weight"], w["ln_vision.bias"], 1e-5)
    grid = v.grid_size
    patches = x[:, 1:, :].reshape(batch, grid, grid, width)
    tokens = [
        torch.cat([patches[:, r, config.merge * g + k] for k in range(config.merge)], dim=-1)
        for r in range(grid)
        for g in range(grid // config.merge)
    ]
    return F.linear(torch.stack(tokens, dim=1), w["llama_proj.weight"], w["llama_proj.bias"])
