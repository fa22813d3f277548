import pytest
from pydantic import ValidationError

from skyeye.model.config import LlmConfig, ModelConfig, VisionConfig


def test_tiny_keeps_the_real_geometry() -> None:
    config = ModelConfig.tiny()
    assert (config.vision.image_size, config.vision.patch_size, config.merge) == (448, 14, 4)
    assert config.vision.grid_size == 32
    assert config.max_image_tokens == 256
    assert config.projector_in == config.vision.hidden_size * 4


def test_published_dimensions() -> None:
    config = ModelConfig.published()
    vision, llm = config.vision, config.llm
    assert (vision.hidden_size, vision.num_layers, vision.num_heads) == (1408, 39, 16)
    assert (vision.mlp_hidden_size, vision.layer_norm_eps) == (6144, 1e-6)
    assert (llm.hidden_size, llm.num_layers, llm.num_heads) == (4096, 32, 32)
    assert (llm.intermediate_size, llm.vocab_size) == (11008, 32000)
    assert config.max_image_tokens == 256
    assert config.projector_in == 5632


def test_json_round_trip() -> None:
    config = ModelConfig.tiny()
    assert ModelConfig.model_validate_json(config.model_dump_json()) == config


def test_inconsistent_geometry_is_refused() -> None:
    vision = VisionConfig(hidden_size=32, num_layers=1, num_heads=2, mlp_hidden_size=64)
    llm = LlmConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=10)
    with pytest.raises(ValidationError, match="does not divide"):
        ModelConfig(vision=vision, llm=llm, merge=3)
    with pytest.raises(ValidationError, match="multiple of 14"):
        VisionConfig(image_size=450, hidden_size=32, num_layers=1, num_heads=2, mlp_hidden_size=64)
    with pytest.raises(ValidationError, match="divisible"):
        LlmConfig(hidden_size=64, num_layers=1, num_heads=3, intermediate_size=64, vocab_size=10)


def test_ln_vision_has_its_own_eps() -> None:
    # MiniGPT-v2's ln_vision is a plain LayerNorm; the tower's own norms use 1e-6.
    published = ModelConfig.published()
    assert (published.ln_vision_eps, published.vision.layer_norm_eps) == (1e-5, 1e-6)
    assert ModelConfig.tiny().ln_vision_eps == 1e-5
    # skyeye-tiny was trained with ln_vision at the tower's eps.
    assert ModelConfig.skyeye_tiny().ln_vision_eps == 1e-6
    config = ModelConfig.tiny().model_copy(update={"ln_vision_eps": 1e-3})
    assert ModelConfig.model_validate_json(config.model_dump_json()).ln_vision_eps == 1e-3
    with pytest.raises(ValidationError, match="ln_vision_eps"):
        ModelConfig.model_validate({**ModelConfig.tiny().model_dump(), "ln_vision_eps": 0})
