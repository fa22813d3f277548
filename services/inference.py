"""The inference application on Ray Serve: VisionEncoder, LlmDecoder and TextEmbedder.

``Ingress`` is the ingress the worker and the API call; it only routes, so the model stages
scale (and, in production, sit on GPUs) independently. The encoder's output goes to the decoder
as a Ray object reference, never through the ingress. Every answer comes back with its sentence
embedding (``TextEmbedder``, all-MiniLM-L6-v2) for semantic search.

With a cache key (a work item id) the encoder also keeps its output in the embedding cache
(:mod:`skyeye.model.embedding_cache`), written by a background thread so the answer never
waits on the object store; a later question about the same tile (:meth:`Ingress.cached`) is
decoded from the cached embeddings and never reaches the encoder.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from skyeye import telemetry
from skyeye.adapters import serve as serve_adapter
from skyeye.adapters.serve import Answers
from skyeye.model import TextDecoder, VisionEncoder, prompts
from skyeye.model.embedding_cache import EmbeddingCache
from skyeye.model.sentences import SentenceEncoder
from skyeye.settings import DecodingSettings, DeploymentSettings, Settings

from ._runtime import service_settings

log = logging.getLogger(__name__)

# The ingress only awaits the stages, which hold their own limits: at Serve's default of 5 it
# let through fewer tiles than one worker poll (8) and the encoder's batches ran part-empty
# (3.0 against 3.6 tiles/s through the pipeline on 2 cores).
_INGRESS_ONGOING = 256


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

    A request is the images of one prompt: one tile, or a clip's frames in time order, and the
    key to keep its embeddings under in the cache (None: not kept).
    """

    def __init__(
        self, model_dir: str, device: str, stage: DeploymentSettings, settings: Settings
    ) -> None:
        _configure_threads(stage)
        telemetry.setup("skyeye-encoder", settings.home)
        self._encoder = VisionEncoder.load(Path(model_dir), device=device)
        self._max_images = stage.max_batch_size
        self._cache = _cache(settings, model_dir)
        self.encode.set_max_batch_size(stage.max_batch_size)
        self.encode.set_batch_wait_timeout_s(stage.batch_wait_timeout_s)

    @_batched
    async def encode(
        self,
        requests: list[list[np.ndarray]],
        cache_keys: list[str | None],
        traces: list[dict[str, str] | None],
    ) -> list[torch.Tensor]:
        """The embeddings of each request's images; Serve gathers the requests into a batch.

        Each request's trace (its work item's, passed along) gets an ``encode`` span.
        """
        spans = telemetry.spans_for("encode", traces, {"skyeye.batch_size": len(requests)})
        try:
            embeds = encode_requests(self._encoder, requests, self._max_images)
        finally:
            telemetry.end_all(spans)
        if self._cache is not None:
            for key, tensor in zip(cache_keys, embeds, strict=True):
                if key is not None:
                    # a copy and a queue slot: the store is written by the cache's own thread
                    self._cache.put_in_background(key, tensor)
        return embeds


@serve.deployment
class LlmDecoderDeployment:
    """Image embeddings + task instructions -> one raw answer per instruction."""

    def __init__(
        self,
        model_dir: str,
        device: str,
        stage: DeploymentSettings,
        decoding: DecodingSettings,
        home: Path,
    ) -> None:
        _configure_threads(stage)
        telemetry.setup("skyeye-decoder", home)
        self._decoder = TextDecoder.load(
            Path(model_dir), device=device, double_bos=decoding.double_bos, steps=decoding.steps
        )
        self._decoding = decoding.call_options()
        # compiled steps compile here, before Serve sends this replica a batch
        self._decoder.warm_up()
        self.generate.set_max_batch_size(stage.max_batch_size)
        self.generate.set_batch_wait_timeout_s(stage.batch_wait_timeout_s)

    @_batched
    async def generate(
        self,
        embeds: list[torch.Tensor],
        instructions: list[list[str]],
        traces: list[dict[str, str] | None],
    ) -> list[list[str]]:
        """One raw answer per instruction of each request; Serve gathers them into a batch.

        The whole batch is decoded together: each request's image prefix computed once, all
        requests' tasks in one decoding loop. Each request's trace gets a ``decode`` span.
        """
        spans = telemetry.spans_for("decode", traces, {"skyeye.batch_size": len(embeds)})
        try:
            return self._decoder.generate_many(
                list(zip(embeds, instructions, strict=True)), **self._decoding
            )
        finally:
            telemetry.end_all(spans)


@serve.deployment
class TextEmbedderDeployment:
    """Texts -> unit-length sentence embeddings (all-MiniLM-L6-v2), batched across requests."""

    def __init__(self, stage: DeploymentSettings) -> None:
        _configure_threads(stage)
        self._encoder = SentenceEncoder()
        self.embed.set_max_batch_size(stage.max_batch_size)
        self.embed.set_batch_wait_timeout_s(stage.batch_wait_timeout_s)

    @_batched
    async def embed(self, requests: list[list[str]]) -> list[list[list[float]]]:
        """One 384-value vector per text of each request, in order."""
        texts = [text for request in requests for text in request]
        vectors = self._encoder.encode(texts).tolist()
        out, start = [], 0
        for request in requests:
            out.append(vectors[start : start + len(request)])
            start += len(request)
        return out


@serve.deployment(
    num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=_INGRESS_ONGOING
)
class Ingress:
    """The application's entry: encoder (or cache) -> decoder -> text embedder."""

    def __init__(
        self,
        encoder: DeploymentHandle,
        decoder: DeploymentHandle,
        embedder: DeploymentHandle,
        settings: Settings,
    ) -> None:
        self._encoder = encoder
        self._decoder = decoder
        self._embedder = embedder
        self._cache = _cache(settings, str(settings.resolved_model_dir))
        self._memo = _VectorMemo()

    async def infer(
        self,
        images: list[np.ndarray],
        instructions: list[str],
        cache_key: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> Answers:
        """Answers about one image, or about several (a clip's frames, one ``<Img>`` slot each).

        With ``cache_key`` the encoder's output is also kept in the embedding cache under it;
        with ``trace`` (a caller's :func:`skyeye.telemetry.carrier`) the encoder and decoder
        record their work in the caller's trace.
        """
        if not images:
            raise ValueError("no images to answer about")
        embeds = self._encoder.encode.remote(images, cache_key, trace)
        texts = await self._decoder.generate.remote(embeds, instructions, trace)
        return await self._answers(instructions, texts)

    async def cached(
        self, cache_key: str, instructions: list[str], trace: dict[str, str] | None = None
    ) -> Answers | None:
        """Answers from the embeddings cached under ``cache_key``, never calling the encoder.

        None when nothing usable is cached (or the cache is off or unreachable): the caller
        then reads the pixels and calls :meth:`infer`.
        """
        if self._cache is None:
            return None
        embeds = await asyncio.to_thread(self._cache.get, cache_key)
        if embeds is None:
            return None
        texts = await self._decoder.generate.remote(embeds, instructions, trace)
        return await self._answers(instructions, texts)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length 384-value sentence embedding per text (search queries)."""
        if not texts:
            return []
        vectors: list[list[float]] = await self._embedder.embed.remote(texts)
        return vectors

    async def _answers(self, instructions: list[str], texts: list[str]) -> Answers:
        """The raw answers, each with the sentence embedding search matches it by.

        What is embedded is :func:`skyeye.model.prompts.search_text` of the answer (a box
        answer's phrases); an answer without text gets none. Short texts recur (phrases, "yes",
        counts) and are embedded once per replica.
        """
        wanted = [prompts.search_text(i, t) for i, t in zip(instructions, texts, strict=True)]
        known: dict[str, list[float]] = {}
        for text in wanted:
            if text.strip() and text not in known and (vector := self._memo.get(text)) is not None:
                known[text] = vector
        missing = list(dict.fromkeys(t for t in wanted if t.strip() and t not in known))
        if missing:
            found: list[list[float]] = await self._embedder.embed.remote(missing)
            for text, vector in zip(missing, found, strict=True):
                self._memo.put(text, vector)
                known[text] = vector
        vectors = [known[t] if t.strip() else None for t in wanted]
        return Answers(texts=texts, vectors=vectors)


class _VectorMemo:
    """Sentence embeddings of recent short texts, the least recently used dropped first.

    Only short texts are kept: they are the ones that recur, where a long caption is seldom
    seen twice. Vectors are kept as float32 arrays, a tenth of a list's memory.
    """

    def __init__(self, size: int = 4096, max_chars: int = 80) -> None:
        self._size = size
        self._max_chars = max_chars
        self._kept: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, text: str) -> list[float] | None:
        """The kept vector of ``text``, or None."""
        vector = self._kept.get(text)
        if vector is None:
            return None
        self._kept.move_to_end(text)
        return cast(list[float], vector.tolist())

    def put(self, text: str, vector: list[float]) -> None:
        """Keep the vector of a short ``text``; a long one is not kept."""
        if len(text) > self._max_chars:
            return
        self._kept[text] = np.asarray(vector, dtype=np.float32)
        self._kept.move_to_end(text)
        if len(self._kept) > self._size:
            self._kept.popitem(last=False)


def _cache(settings: Settings, model_dir: str) -> EmbeddingCache | None:
    """The embedding cache of ``settings`` for the model in ``model_dir``; None when it is off.

    Entries are tagged with the model's folder name: another model's embeddings are misses.
    """
    if settings.s3_endpoint is None:
        log.warning("no object store configured: the embedding cache is off")
        return None
    return EmbeddingCache.from_settings(settings, model=Path(model_dir).name)


def build_app(settings: Settings) -> serve.Application:
    """The application: the model stages, each sized by ``settings``, behind the ingress."""
    model_dir = str(settings.resolved_model_dir)

    def stage(deployment: serve.Deployment, name: str, cfg: DeploymentSettings) -> serve.Deployment:
        return deployment.options(
            name=name,
            autoscaling_config=cfg.autoscaling_config(),
            ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
            max_ongoing_requests=max(2 * cfg.max_batch_size, 4),
        )

    encoder = stage(_deployment(VisionEncoderDeployment), "VisionEncoder", settings.encoder)
    decoder = stage(_deployment(LlmDecoderDeployment), "LlmDecoder", settings.decoder)
    embedder = stage(_deployment(TextEmbedderDeployment), "TextEmbedder", settings.embedder)
    return _deployment(Ingress).bind(
        encoder.bind(model_dir, settings.device, settings.encoder, settings),
        decoder.bind(
            model_dir, settings.device, settings.decoder, settings.decoding, settings.home
        ),
        embedder.bind(settings.embedder),
        settings,
    )


def app_from_env(args: dict[str, Any]) -> serve.Application:
    """The application as a Serve config file imports it (KubeRay's ``serveConfigV2``).

    ``import_path: skyeye.services.inference:app_from_env``. The settings come from the
    ``SKYEYE_*`` environment of the Ray pods, as every service's do; the config's ``args``
    override them by field name, nested settings as mappings (``decoder: {max_replicas: 4}``).
    """
    return build_app(Settings(**args))


def deploy(settings: Settings) -> None:
    """Deploy (or update) the application."""
    serve_adapter.deploy(build_app(settings), settings)


if __name__ == "__main__":
    deploy(service_settings("skyeye-deploy"))
