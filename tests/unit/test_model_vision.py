from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from skyeye.model import VisionEncoder, build_tiny_model
from skyeye.model.architecture import VisionStage, merge_patches
from skyeye.model.config import ModelConfig
from skyeye.model.vision import CLIP_MEAN, CLIP_STD, preprocess
from tests.unit._eva_reference import eva_reference, stage_to_eva

MEAN = np.array(CLIP_MEAN).reshape(3, 1, 1)
STD = np.array(CLIP_STD).reshape(3, 1, 1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> VisionEncoder:
    path = tmp_path_factory.mktemp("model") / "tiny"
    build_tiny_model(path, seed=0)
    return VisionEncoder.load(path)


def _image(seed: int, height: int = 300, width: int = 500) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_preprocess_is_bicubic_resize_and_clip_normalisation() -> None:
    image = _image(0, 123, 457)
    pixels = preprocess([image, _image(1, 600, 600)], 448)
    assert pixels.shape == (2, 3, 448, 448) and pixels.dtype == torch.float32
    resized = np.asarray(Image.fromarray(image).resize((448, 448), Image.Resampling.BICUBIC))
    expected = (resized.transpose(2, 0, 1) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(pixels[0].numpy(), expected, atol=1e-5)


def test_constant_image_normalises_to_the_clip_constants() -> None:
    pixels = preprocess([np.full((50, 70, 3), 255, dtype=np.uint8)], 448)[0]
    for channel in range(3):
        value = (1 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        torch.testing.assert_close(pixels[channel], torch.full((448, 448), value))


def test_gray_and_rgba_become_rgb() -> None:
    rgb = _image(2)
    gray = rgb[:, :, 0]
    from_gray = preprocess([gray], 448)[0] * torch.tensor(CLIP_STD).view(3, 1, 1)
    from_gray += torch.tensor(CLIP_MEAN).view(3, 1, 1)
    torch.testing.assert_close(from_gray[0], from_gray[1])
    torch.testing.assert_close(from_gray[0], from_gray[2])
    torch.testing.assert_close(preprocess([gray[:, :, None]], 448), preprocess([gray], 448))
    rgba = np.dstack([rgb, np.full(gray.shape, 7, dtype=np.uint8)])
    torch.testing.assert_close(preprocess([rgba], 448), preprocess([rgb], 448))


def test_bad_images_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess([np.zeros((10, 10, 3), dtype=np.float32)], 448)
    with pytest.raises(ValueError, match="HxW"):
        preprocess([np.zeros((10, 10, 2), dtype=np.uint8)], 448)


def test_merge_takes_four_horizontal_neighbours() -> None:
    grid, channels = 32, 2
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    # Patch (r, c) carries its own coordinates; patches are in row-major order.
    patches = torch.stack([rows, cols], dim=-1).reshape(1, grid * grid, channels).float()
    merged = merge_patches(patches, 4)
    assert merged.shape == (1, 256, 8)
    for token in (0, 1, 7, 8, 100, 255):
        row, group = divmod(token, grid // 4)
        expected = [[row, 4 * group + k] for k in range(4)]
        assert merged[0, token].view(4, channels).tolist() == expected


def test_encode_shape_and_batching(encoder: VisionEncoder) -> None:
    images = [_image(3), _image(4, 448, 448), _image(5, 64, 900)]
    embeds = encoder.encode(images)
    assert embeds.shape == (3, 256, encoder.config.llm.hidden_size)
    assert embeds.dtype == torch.float32 and embeds.device.type == "cpu"
    alone = torch.cat([encoder.encode([image]) for image in images])
    torch.testing.assert_close(embeds, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(embeds[0], embeds[1])


def test_stage_equals_a_direct_eva_implementation() -> None:
    config = ModelConfig.tiny()
    torch.manual_seed(0)
    stage = VisionStage(config).eval()
    with torch.no_grad():
        # Non-trivial norms and biases everywhere (a fresh init leaves them at 1 and 0).
        for name, param in stage.named_parameters():
            param.add_(torch.randn_like(param) * 0.1)
            if name.endswith("qkv.bias"):
                param[config.vision.hidden_size : 2 * config.vision.hidden_size] = 0
        pixels = preprocess([_image(6), _image(7)], 448)
        torch.testing.assert_close(
            stage(pixels), eva_reference(stage_to_eva(stage), config, pixels)
        )


def test_load_respects_device_and_dtype(tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "m", seed=1)
    encoder = VisionEncoder.load(tmp_path / "m", device="cpu", dtype=torch.bfloat16)
    assert encoder.stage.llama_proj.weight.dtype == torch.bfloat16
    assert encoder.stage.vision_model.post_layernorm.weight.dtype == torch.float32
    embeds = encoder.encode([_image(8)])
    assert embeds.dtype == torch.float32 and embeds.shape == (1, 256, 64)


def test_ln_vision_normalises_with_its_own_eps() -> None:
    # An eps far from the tower's 1e-6, so that using the wrong one shows.
    config = ModelConfig.tiny().model_copy(update={"ln_vision_eps": 0.25})
    torch.manual_seed(0)
    stage = VisionStage(config).eval()
    tower = stage.vision_model
    assert tower.post_layernorm.eps == 0.25
    norms = [layer.layer_norm1 for layer in tower.encoder.layers]
    assert {norm.eps for norm in norms} == {config.vision.layer_norm_eps}
    captured: list[torch.Tensor] = []
    tower.encoder.register_forward_hook(
        lambda _module, _args, out: captured.append(out.last_hidden_state)
    )
    ln = tower.post_layernorm
    with torch.no_grad():
        tokens = stage(preprocess([_image(9)], 448))

        def projected(eps: float) -> torch.Tensor:
            normed = F.layer_norm(captured[0], ln.normalized_shape, ln.weight, ln.bias, eps)
            return stage.llama_proj(merge_patches(normed[:, 1:], config.merge))

        torch.testing.assert_close(tokens, projected(0.25))
        assert not torch.allclose(tokens, projected(config.vision.layer_norm_eps), atol=1e-3)
