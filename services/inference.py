"""The inference application on Ray Serve: VisionEncoder and LlmDecoder, composed by handle.

``Ingress`` is the ingress the worker calls; it only routes, so the two model stages scale
(and, in production, sit on GPUs) independently. The encoder's output goes to the decoder as a
Ray object reference, never through the ingress.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from skyeye.adapters import serve as serve_adapter
from skyeye.model import TextDecoder, VisionEncoder
from skyeye.settings import DecodingSettings, DeploymentSettings, Settings

from ._runtime import service_settings

log = logging.getLogger(__name__)


def _configure_threads(stage: DeploymentSettings) -> None:
    # torch defaults to every core per process; replicas sharing a node must not oversubscribe.
    torch.set_num_threads(max(1, round(stage.num_cpus)))


def _batched(method: Callable[..., Coroutine[Any, Any, list[Any]]]) -> Any:
    """``serve.batch`` on a method, as Ray's type hints cannot describe it.

    Serve batches every argument of the method and its wrapper has batch-size setters; the hints
    allow one list argument and show a plain callable.
    """
    return serve.batch(method)


def _deployment(decorated: type) -> serve.Deployment:
    """A ``@serve.deployment`` class as Serve made it: mypy does not apply class decorators."""
    return cast(serve.Deployment, decorated)


def encode_requests(
    encoder: VisionEncoder, requests: list[list[np.ndarray]], max_images: int
) -> list[torch.Tensor]:
    """(frames, 256, width) per request, from forward passes of at most ``max_images`` images.

    The batch size counts requests and a clip's request holds up to 12 frames: the cap keeps one
    pass of the full-size tower within the memory a batch of tiles needs.
    """
    images = [image for images in requests for image in images]
    passes = [
        encoder.encode(images[start : start + max_images])
        for start in range(0, len(images), max_images)
    ]
    return list(torch.split(torch.cat(passes), [len(images) for images in requests]))


@serve.deployment
class VisionEncoderDeployment:
    """Pixels -> LLM-ready image embeddings (256 x LLM width per image), batched across tiles.

    A request is the images of one prompt: one tile, or a clip's frames in time order.
    """

    def __init__(self, model_dir: str, device: str, stage: DeploymentSettings) -> None:
        _configure_threads(stage)
        self._encoder = VisionEncoder.load(Path(model_dir), device=device)
        self._max_images = stage.max_batch_size
        self.encode.set_max_batch_size(stage.max_batch_size)
        self.encode.set_batch_wait_timeout_s(stage.batch_wait_timeout_s)

    @_batched
    async def encode(self, requests: list[list[np.ndarray]]) -> list[torch.Tensor]:
        """The embeddings of each request's images; Serve gathers the requests into a batch."""
        return encode_requests(self._encoder, requests, self._max_images)


@serve.deployment
class LlmDecoderDeployment:
    """Image embeddings + task instructions -> one raw answer per instruction."""

    def __init__(
        self, model_dir: str, device: str, stage: DeploymentSettings, decoding: DecodingSettings
    ) -> None:
        _configure_threads(stage)
        self._decoder = TextDecoder.load(Path(model_dir), device=device)
        self._decoding = decoding.model_dump()
        self.generate.set_max_batch_size(stage.max_batch_size)
        self.generate.set_batch_wait_timeout_s(stage.batch_wait_timeout_s)

    @_batched
    async def generate(
        self, embeds: list[torch.Tensor], instructions: list[list[str]]
    ) -> list[list[str]]:
        """One raw answer per instruction of each request; Serve gathers them into a batch."""
        # one tile at a time: each reuses its own image prefix across its tasks
        return [
            self._decoder.generate(e, i, **self._decoding)
            for e, i in zip(embeds, instructions, strict=True)
        ]


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Ingress:
    """The application's entry: routes the worker's calls through the encoder to the decoder."""

    def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle) -> None:
        self._encoder = encoder
        self._decoder = decoder

    async def infer(self, images: list[np.ndarray], instructions: list[str]) -> list[str]:
        """Answers about one image, or about several (a clip's frames, one ``<Img>`` slot each)."""
        if not images:
            raise ValueError("no images to answer about")
        embeds = self._encoder.encode.remote(images)
        return await self._decoder.generate.remote(embeds, instructions)


def build_app(settings: Settings) -> serve.Application:
    """The application: the two model stages, sized by ``settings``, behind the ingress."""
    model_dir = str(settings.resolved_model_dir)

    def stage(
        deployment: serve.Deployment, name: str, cfg: DeploymentSettings, *extra: object
    ) -> serve.Application:
        return deployment.options(
            name=name,
            autoscaling_config=cfg.autoscaling_config(),
            ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
            max_ongoing_requests=max(2 * cfg.max_batch_size, 4),
        ).bind(model_dir, settings.device, cfg, *extra)

    return _deployment(Ingress).bind(
        stage(_deployment(VisionEncoderDeployment), "VisionEncoder", settings.encoder),
        stage(_deployment(LlmDecoderDeployment), "LlmDecoder", settings.decoder, settings.decoding),
    )


def deploy(settings: Settings) -> None:
    """Deploy (or update) the application."""
    serve_adapter.deploy(build_app(settings), settings)


if __name__ == "__main__":
    deploy(service_settings("skyeye-deploy"))
