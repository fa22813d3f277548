"""The model deployments' batching logic, without a cluster."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from skyeye.model import TextDecoder, VisionEncoder, build_tiny_model, prompts
from skyeye.services import inference
from skyeye.services.inference import app_from_env, encode_requests
from skyeye.settings import DecodingSettings, DeploymentSettings, Settings


class _CountingEncoder:
    """Stands in for VisionEncoder: one (256, 4) embedding per image, filled with its mean."""

    def __init__(self) -> None:
        self.passes: list[int] = []

    def encode(self, images: list[np.ndarray]) -> torch.Tensor:
        self.passes.append(len(images))
        return torch.stack([torch.full((256, 4), float(i.mean())) for i in images])


def _images(*values: int) -> list[np.ndarray]:
    return [np.full((8, 8, 3), v, dtype=np.uint8) for v in values]


def test_requests_get_their_own_frames_back_in_order() -> None:
    encoder = _CountingEncoder()
    requests = [_images(1), _images(2, 3, 4, 5, 6), _images(7)]
    out = encode_requests(encoder, requests, max_images=3)  # type: ignore[arg-type]
    assert encoder.passes == [3, 3, 1]  # never more than max_images in one forward pass
    assert [e.shape[0] for e in out] == [1, 5, 1]
    assert [e[:, 0, 0].tolist() for e in out] == [[1.0], [2.0, 3.0, 4.0, 5.0, 6.0], [7.0]]


def test_a_batch_that_fits_is_one_pass() -> None:
    encoder = _CountingEncoder()
    encode_requests(encoder, [_images(1), _images(2)], max_images=4)  # type: ignore[arg-type]
    assert encoder.passes == [2]


def test_a_serve_config_builds_the_app_from_settings_its_args_override() -> None:
    """KubeRay's serveConfigV2 imports app_from_env; its args are Settings fields."""
    app = app_from_env({"decoder": {"max_replicas": 3, "num_gpus": 1}, "device": "cpu"})
    # the ingress is bound to the settings it was built from (reads a Ray-internal attribute)
    settings = app._bound_deployment.init_args[-1]
    assert isinstance(settings, Settings)
    assert (settings.decoder.max_replicas, settings.decoder.num_gpus) == (3, 1)
    with pytest.raises(ValidationError, match=r"decoder\.max_replicas"):
        app_from_env({"decoder": {"max_replicas": "many"}})


def test_the_decoder_decodes_a_serve_batch_in_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LlmDecoder's batch handler on a batch as Serve gathers one, called directly (no Serve).

    Stubbed: ``telemetry.setup`` (it would install this process's tracer provider) is a no-op,
    and the decoder's ``generate_many`` is wrapped to count its calls.
    """
    build_tiny_model(tmp_path / "model", seed=0)
    monkeypatch.setattr(inference.telemetry, "setup", lambda *_: None)
    deployment_class = inference.LlmDecoderDeployment.func_or_class
    decoding = DecodingSettings(max_new_tokens=6, double_bos=True, steps="static")
    deployment = deployment_class(
        str(tmp_path / "model"), "cpu", DeploymentSettings(), decoding, tmp_path
    )
    decoder: TextDecoder = deployment._decoder
    # the prompt's form and the way of stepping reach the decoder, not each call
    assert decoder.double_bos and decoder.steps == "static"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(3)]
    embeds = VisionEncoder.load(tmp_path / "model").encode(images)
    # A tile, a two-frame clip, a tile with three tasks: what the encoder's requests return.
    requests = [embeds[0:1], embeds[1:3], embeds[2:3]]
    instructions = [
        [prompts.caption()],
        [prompts.video_caption(), prompts.vqa("Is the car moving?")],
        [prompts.detection("building"), prompts.detection("road"), prompts.caption()],
    ]
    pairs = zip(requests, instructions, strict=True)
    one_at_a_time = [decoder.generate(e, i, max_new_tokens=6) for e, i in pairs]
    calls: list[int] = []

    def counted(items: list, **kwargs: object) -> list[list[str]]:
        calls.append(len(items))
        return TextDecoder.generate_many(decoder, items, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decoder, "generate_many", counted)
    handler = deployment_class.generate.__wrapped__
    answers = asyncio.run(handler(deployment, requests, instructions, [None] * 3))
    assert calls == [3]
    assert answers == one_at_a_time


class _Embedder:
    """Stands in for the TextEmbedder's handle: records each call, returns one vector per text."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @property
    def embed(self) -> "_Embedder":
        return self

    def remote(self, texts: list[str]) -> object:
        self.calls.append(list(texts))

        async def vectors() -> list[list[float]]:
            return [[float(len(t)), 1.0] for t in texts]

        return vectors()


def test_answers_are_embedded_by_what_search_matches_and_short_texts_once() -> None:
    """The Ingress's answer step, called directly: the encoder, decoder and embedder handles
    are stand-ins (no Serve)."""
    embedder = _Embedder()
    ingress = inference.Ingress.func_or_class(None, None, embedder, Settings(s3_endpoint=None))
    instructions = [prompts.detection("vehicle"), prompts.vqa("Is there water?"), prompts.caption()]
    texts = ["<p>car</p>{<1><2><3><4>}<p>car</p>{<5><6><7><8>}", "yes", " "]
    first = asyncio.run(ingress._answers(instructions, texts))
    assert first.texts == texts
    # the box answer by its phrase, the empty answer not at all
    assert embedder.calls == [["car", "yes"]]
    assert first.vectors == [[3.0, 1.0], [3.0, 1.0], None]
    long_caption = "a long caption " * 10
    second = asyncio.run(
        ingress._answers(instructions, ["<p>car</p>{<1><2><3><4>}", "yes", long_caption])
    )
    # "car" and "yes" were kept from the first call; a long caption is embedded every time
    assert embedder.calls[1:] == [[long_caption]]
    assert second.vectors == [[3.0, 1.0], [3.0, 1.0], [float(len(long_caption)), 1.0]]
    asyncio.run(ingress._answers([prompts.caption()], [long_caption]))
    assert embedder.calls[2:] == [[long_caption]]
