"""Stage 2: image embeddings + instructions -> answers, with the Llama decoder (MiniGPT-v2 style).

Each prompt is ``wrap(instruction, n_frames)`` split at ``<ImageHere>``; the text segments are
tokenized, embedded, and the image embeddings are spliced between them. The instructions about one
image (or one clip's frames) share everything up to the end of the last image, so by default that
prefix is run through the decoder once per image and its key/value cache is copied to each of its
rows; only the rows' own suffixes are batched, padded and masked so that each row is decoded
exactly as it would be alone. Several images are decoded together
(:meth:`TextDecoder.generate_many`): their prefixes run as one left-padded batch, then all their
rows as one batch. The plain path (``reuse_prefix=False``) left-pads whole prompts, as MiniGPT-v2
does. The steps after the prompt run on a growing key/value cache by default, or on a static one
of fixed shapes, optionally compiled with ``torch.compile`` (CUDA graphs on a GPU): see
:data:`~skyeye.settings.DecodeSteps`. Decoding is our own loop over ``transformers``' logits
processors rather than ``generate``: ``generate`` cannot continue a batch from a shared cache with
padding inside the sequence, and it fills every setting left unset from the checkpoint's own
``generation_config.json``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

import torch
from transformers import (
    LlamaForCausalLM,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

from skyeye.model import checkpoint
from skyeye.model.config import ModelConfig
from skyeye.model.prompts import IMAGE_PLACEHOLDER, caption, wrap
from skyeye.settings import DecodeSteps

__all__ = ["IMAGE_TOKEN", "DecodeOptions", "PromptBatch", "TextDecoder"]


# Marks image positions in PromptBatch.token_ids (never a real token id).
IMAGE_TOKEN = -1

_END_OF_PROMPT = "[/INST]"

# Tokenized prompts kept per decoder. Tasks repeat a few instructions (every tile gets the same
# ones; training draws from under a hundred), and tokenizing one took about a millisecond of host
# time (world instructions, 2-core CPU), which a GPU step would otherwise wait on.
_CACHED_PROMPTS = 1024

# A static cache's length is the prompt and the answer rounded up to a multiple of this, so
# prompts of similar length share one cache (and, on a GPU, one recorded CUDA graph per rows).
_LENGTH_STEP = 128

# And its rows to a multiple of this: few spare rows (powers of two left up to a third of a
# 48-row batch spare, which cost a third more time on the CPU) and few shapes.
_ROWS_STEP = 8

# A static cache layer, and the keys and values it views.
_Viewed = tuple[StaticLayer, torch.Tensor, torch.Tensor]

# One prompt, unpadded: its token ids (IMAGE_TOKEN at image positions) and input embeddings.
_Row = tuple[list[int], torch.Tensor]


class _ReservedLayer(DynamicLayer):
    """transformers' growing key/value cache layer, able to reserve room for the tokens to come.

    ``DynamicLayer.update`` concatenates, copying the whole cache at every decoding step. With
    every tile of a Serve batch in one batch that copy took more than half of the batch's CPU
    time (skyeye-tiny, 8 tiles x 6 tasks, one thread; docs/skyeye-tiny.md). With room reserved,
    ``update`` writes the new positions in place and the keys and values are views of the room;
    the room is dropped when anything else replaces them (every other method of the base class
    assigns new tensors).
    """

    def __init__(self) -> None:
        super().__init__()
        self._room: tuple[torch.Tensor, torch.Tensor] | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more positions after the ones held (one copy of them)."""
        if self.keys is None or self.values is None or self.get_seq_length() == 0 or extra < 1:
            return
        length = self.keys.shape[-2]
        keys, values = (
            held.new_empty((*held.shape[:-2], length + extra, held.shape[-1]))
            for held in (self.keys, self.values)
        )
        keys[..., :length, :] = self.keys
        values[..., :length, :] = self.values
        self._room = (keys, values)
        self._view(length)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions: into the room if it is still ours and large enough."""
        room, views = self._room, self._views
        if room is not None and views is not None and self.keys is views[0]:
            start = views[0].shape[-2]
            end = start + key_states.shape[-2]
            if end <= room[0].shape[-2]:
                room[0][..., start:end, :] = key_states
                room[1][..., start:end, :] = value_states
                return self._view(end)
        self._room = self._views = None
        return super().update(key_states, value_states, *args, **kwargs)

    def _view(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._room is None:
            raise RuntimeError("no room reserved")
        keys, values = (held[..., :length, :] for held in self._room)
        self.keys, self.values = keys, values
        self._views = (keys, values)
        return keys, values


class _Cache(Cache):
    """A growing key/value cache of :class:`_ReservedLayer`, one per decoder layer."""

    def __init__(self, num_layers: int) -> None:
        self._reserving = [_ReservedLayer() for _ in range(num_layers)]
        super().__init__(layers=list(self._reserving))

    def reserve(self, extra: int) -> None:
        """Make room in every layer for ``extra`` more positions."""
        for layer in self._reserving:
            layer.reserve(extra)

    def held(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values, (rows, heads, positions, head size)."""
        held = []
        for layer in self._reserving:
            if layer.keys is None or layer.values is None:
                raise RuntimeError("the cache holds nothing yet")
            held.append((layer.keys, layer.values))
        return held


class _StaticSteps:
    """Decoding steps on preallocated key/value caches of fixed shapes, optionally compiled.

    A call's rows are rounded up to a multiple of :data:`_ROWS_STEP` and its length (prompt and
    answer) to a multiple of :data:`_LENGTH_STEP`. Each such shape has a cache that lives as long
    as the decoder, so a compiled step (and its CUDA graph for that shape) sees the same tensors
    every time. The first shape compiles the step, the first other row count and the first other
    length compile it again for any (three compilations at most); on a GPU each shape records
    its own CUDA graph on its first batch (a few steps' time). The caches of one length are
    views of one buffer, sized for the most rows asked so far: a smaller shape's rows are its
    first rows. Spare rows repeat row 0's attention; their logits are dropped.
    """

    def __init__(self, llm: LlamaForCausalLM, *, compiled: bool) -> None:
        self._llm = llm
        self._step: Callable[..., torch.Tensor] = (
            # dynamic shapes as torch decides: a shape whose rows or length differ from the
            # first's compiles once more with that size left symbolic, for every later value
            torch.compile(_next_logits, mode="reduce-overhead", fullgraph=True)
            if compiled
            else _next_logits
        )
        # by length: each layer's keys and values buffer
        self._buffers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        # by (rows, length): the cache, and each layer with the keys and values it views
        self._caches: dict[tuple[int, int], tuple[Cache, list[_Viewed]]] = {}

    def start(
        self, prompt: _Cache, attention_mask: torch.Tensor, max_new_tokens: int, pad_id: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Copy the prompt's cache into the static cache of its shape; the step function.

        The step takes each row's new token id and returns each row's next logits, in fp32.
        """
        rows, length = attention_mask.shape
        padded = -(-rows // _ROWS_STEP) * _ROWS_STEP
        room = -(-(length + max_new_tokens) // _LENGTH_STEP) * _LENGTH_STEP
        held = prompt.held()
        cache, layers = self._cache(padded, room, held[0][0])
        for (keys, values), (layer, keys_room, values_room) in zip(held, layers, strict=True):
            keys_room[:rows, :, :length] = keys
            values_room[:rows, :, :length] = values
            layer.cumulative_length.fill_(length)
        mask = attention_mask.new_zeros((padded, room))
        mask[:, :length] = attention_mask[0]
        mask[:rows, :length] = attention_mask
        positions = _positions(mask[:, :length])[:, -1:].clone()
        ids = torch.full((padded, 1), pad_id, dtype=torch.long, device=attention_mask.device)
        written = length

        def step(next_ids: torch.Tensor) -> torch.Tensor:
            nonlocal written
            mask[:, written] = 1
            positions.add_(1)
            ids[:rows, 0] = next_ids
            written += 1
            # A new run of the CUDA graphs, which reuses their outputs: the last step's logits
            # are used up, and these are copied out.
            torch.compiler.cudagraph_mark_step_begin()
            return self._step(self._llm, cache, mask, positions, input_ids=ids)[:rows].clone()

        return step

    def _cache(self, rows: int, room: int, like: torch.Tensor) -> tuple[Cache, list[_Viewed]]:
        """The static cache of ``rows`` x ``room``; its length's buffer grows to ``rows``."""
        buffers = self._buffers.get(room)
        if buffers is None or buffers[0][0].shape[0] < rows:
            shape = (rows, like.shape[1], room, like.shape[3])
            buffers = [
                (like.new_zeros(shape), like.new_zeros(shape))
                for _ in range(self._llm.config.num_hidden_layers)
            ]
            self._buffers[room] = buffers
            # the caches of this length viewed the old buffer: made again when next asked for
            self._caches = {key: c for key, c in self._caches.items() if key[1] != room}
        if (rows, room) not in self._caches:
            layers = [
                (_view_layer(keys[:rows], values[:rows]), keys[:rows], values[:rows])
                for keys, values in buffers
            ]
            self._caches[(rows, room)] = (Cache(layers=[layer for layer, _, _ in layers]), layers)
        return self._caches[(rows, room)]


def _view_layer(keys: torch.Tensor, values: torch.Tensor) -> StaticLayer:
    """A transformers static cache layer over the given tensors instead of its own."""
    # Initialised at length 0, so the buffer it allocates of its own is empty: it sets the
    # layer's device, sizes and position counter, then takes the views and their length.
    layer = StaticLayer(max_cache_len=0)
    layer.lazy_initialization(keys[:, :, :0], values[:, :, :0])
    layer.keys, layer.values = keys, values
    layer.max_cache_len = keys.shape[2]
    # a compiled step's CUDA graphs read and write them in place
    torch._dynamo.mark_static_address(keys)
    torch._dynamo.mark_static_address(values)
    return layer


class DecodeOptions(TypedDict, total=False):
    """How to decode, as :meth:`TextDecoder.generate_ids_many` takes it (its defaults apply)."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    generator: torch.Generator | None
    reuse_prefix: bool


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded decoder input: one row per instruction."""

    token_ids: torch.Tensor  # (B, L) long; IMAGE_TOKEN at image positions, pad id at padding
    attention_mask: torch.Tensor  # (B, L) long; 0 at padding
    inputs_embeds: torch.Tensor  # (B, L, H)


class TextDecoder:
    """Stage 2 of the served model: decodes answers to instructions about already encoded images.

    Each prompt starts with one BOS token, as Llama-2 and skyeye-tiny were trained. With
    ``double_bos`` it starts with two, as MiniGPT-v2's evaluation prompt does (its template's
    literal ``<s>`` after the tokenizer's own BOS): for comparing with the published figures.
    ``steps`` says how the steps after the prompt run (:data:`~skyeye.settings.DecodeSteps`);
    whichever way, the answers are the same. A decoder decodes one call at a time; concurrent
    calls wait their turn.
    """

    def __init__(
        self,
        config: ModelConfig,
        llm: LlamaForCausalLM,
        tokenizer: PreTrainedTokenizerBase,
        *,
        double_bos: bool = False,
        steps: DecodeSteps = "eager",
    ) -> None:
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise ValueError("the tokenizer has no EOS token")
        bos_id = tokenizer.bos_token_id
        if double_bos and bos_id is None:
            raise ValueError("double_bos needs a tokenizer with a BOS token")
        self.double_bos = double_bos
        # Put in front of the tokenizer's own BOS.
        self._extra_bos: tuple[int, ...] = (bos_id,) if double_bos and bos_id is not None else ()
        self.eos_id: int = eos_id
        # Llama-2 defines no pad token (MiniGPT-v2 borrows "$$"); padded positions are masked and
        # finished rows are cut at EOS, so the pad id only has to be a valid id.
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
        self._segment_ids = functools.lru_cache(maxsize=_CACHED_PROMPTS)(self._tokenize)
        self.steps: DecodeSteps = steps
        self._static = None if steps == "eager" else _StaticSteps(llm, compiled=steps == "compiled")
        # the static caches are shared by every call
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        double_bos: bool = False,
        steps: DecodeSteps = "eager",
    ) -> TextDecoder:
        """The language stage from a model folder, in ``dtype`` or else the device's default.

        ``double_bos``: two BOS tokens per prompt, as MiniGPT-v2's evaluation (see the class);
        ``steps``: how the steps after the prompt run (:data:`~skyeye.settings.DecodeSteps`).
        """
        config, llm, tokenizer = checkpoint.load_llm(
            path, device, dtype or checkpoint.default_dtype(device)
        )
        return cls(config, llm, tokenizer, double_bos=double_bos, steps=steps)

    @property
    def device(self) -> torch.device:
        """Where the Llama decoder's weights are, and so where its prompts and caches must be."""
        return self.llm.device

    def _tokenize(self, instruction: str, n_frames: int) -> tuple[tuple[int, ...], ...]:
        """The token ids of each text segment of the prompt, around its ``n_frames`` images."""
        segments = wrap(instruction, n_frames).split(IMAGE_PLACEHOLDER)
        # BOS exactly once, at the start: only the first segment gets special tokens. MiniGPT-v2's
        # template text begins with a literal "<s>" *and* tokenizes that segment with
        # add_special_tokens=True, which gives two BOS tokens with the slow Llama tokenizer of its
        # transformers 4.30 (the text after the literal is split off and tokenized as it is
        # here); we keep one, the form Llama-2 was trained with, unless double_bos asks for
        # MiniGPT-v2's. split_special_tokens keeps an instruction that contains "</s>" or "<s>"
        # from injecting control tokens, so the second BOS is added as an id, not as text.
        first, *rest = (
            tuple(
                self.tokenizer(
                    segment, add_special_tokens=i == 0, split_special_tokens=True
                ).input_ids
            )
            for i, segment in enumerate(segments)
        )
        return ((*self._extra_bos, *first), *rest)

    def warm_up(self) -> None:
        """Compile the decoding steps for every batch to come; nothing unless ``compiled``.

        Compiling takes tens of seconds, three times: for a first shape, for any number of
        rows and for any length. Called where a replica starts, it keeps that wait off the
        first batches. Runs one step on three dummy batches: one row (8 with the spares), 9 rows
        (16), and one two-frame row (a longer cache).
        """
        if self._static is None or self.steps != "compiled":
            return
        frames = torch.zeros(
            (2, self.config.max_image_tokens, self.config.llm.hidden_size), device=self.device
        )
        with self._lock, torch.inference_mode():
            for embeds, rows in ((frames[0], 1), (frames[0], _ROWS_STEP + 1), (frames, 1)):
                cache = _Cache(self.llm.config.num_hidden_layers)
                logits, mask = self._prefill_shared([self._rows(embeds, [caption()] * rows)], cache)
                step = self._static.start(cache, mask, 2, self.pad_id)
                step(torch.argmax(logits, dim=-1))

    def prompt_batch(self, image_embeds: torch.Tensor, instructions: list[str]) -> PromptBatch:
        """The whole prompts, left-padded: the layout of the no-reuse path (and of MiniGPT-v2)."""
        return self._left_pad(self._rows(image_embeds, instructions))

    def _rows(self, image_embeds: torch.Tensor, instructions: Sequence[str]) -> list[_Row]:
        """(token ids, input embeddings) of each prompt, unpadded."""
        frames = self._frames(image_embeds)
        n_frames, n_tokens, _ = frames.shape
        embed = self.llm.model.embed_tokens
        frames = frames.to(device=self.device, dtype=embed.weight.dtype)
        image_ids = [IMAGE_TOKEN] * n_tokens
        rows: list[_Row] = []
        for instruction in instructions:
            segments = self._segment_ids(instruction, n_frames)
            ids: list[int] = []
            parts: list[torch.Tensor] = []
            for i, segment in enumerate(segments):
                ids += segment
                parts.append(embed(torch.tensor(segment, dtype=torch.long, device=self.device)))
                if i < n_frames:
                    ids += image_ids
                    parts.append(frames[i])
            rows.append((ids, torch.cat(parts)))
        return rows

    def _left_pad(self, rows: list[_Row]) -> PromptBatch:
        length = max(len(ids) for ids, _ in rows)
        hidden = rows[0][1].shape[1]
        token_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        inputs_embeds = rows[0][1].new_zeros((len(rows), length, hidden))
        for row, (ids, embeds) in enumerate(rows):
            token_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
            inputs_embeds[row, length - len(ids) :] = embeds
        return PromptBatch(
            token_ids=token_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            inputs_embeds=inputs_embeds,
        )

    def _frames(self, image_embeds: torch.Tensor) -> torch.Tensor:
        frames = image_embeds.unsqueeze(0) if image_embeds.dim() == 2 else image_embeds
        expected = (self.config.max_image_tokens, self.config.llm.hidden_size)
        if frames.dim() != 3 or tuple(frames.shape[1:]) != expected or frames.shape[0] < 1:
            raise ValueError(
                f"image_embeds must be {expected} or (frames, *{expected}), "
                f"got {tuple(image_embeds.shape)}"
            )
        return frames

    def generate(
        self,
        image_embeds: torch.Tensor,
        instructions: Sequence[str],
        **options: Unpack[DecodeOptions],
    ) -> list[str]:
        """One raw answer per instruction, all about the same image (or the same frames).

        The one-item case of :meth:`generate_many`.
        """
        return self.generate_many([(image_embeds, instructions)], **options)[0]

    def generate_ids(
        self,
        image_embeds: torch.Tensor,
        instructions: Sequence[str],
        **options: Unpack[DecodeOptions],
    ) -> list[list[int]]:
        """The new token ids of each row, up to (excluding) its first EOS.

        The one-item case of :meth:`generate_ids_many`, which says what the options do.
        """
        return self.generate_ids_many([(image_embeds, instructions)], **options)[0]

    def generate_many(
        self,
        items: Sequence[tuple[torch.Tensor, Sequence[str]]],
        **options: Unpack[DecodeOptions],
    ) -> list[list[str]]:
        """The raw answers to each item's instructions, all items decoded together.

        An item is one image's embeddings (or one clip's frames) and the instructions about it;
        see :meth:`generate_ids_many`.
        """
        rows = self.generate_ids_many(items, **options)
        return [[self._decode(ids) for ids in item] for item in rows]

    def generate_ids_many(
        self,
        items: Sequence[tuple[torch.Tensor, Sequence[str]]],
        max_new_tokens: int = 24,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        *,
        top_k: int = 50,
        repetition_penalty: float = 1.0,
        generator: torch.Generator | None = None,
        reuse_prefix: bool = True,
    ) -> list[list[list[int]]]:
        """Per item, the new token ids of each instruction's row, up to (excluding) its first EOS.

        Items may differ in their number of instructions and of frames. Every row of every item
        is decoded in one loop. ``reuse_prefix`` computes the prompt part that an item's rows
        share once per item (see :meth:`_prefill_shared`); without it whole prompts are
        left-padded into one batch.

        Greedy unless ``do_sample``; the logits processors and the sampling draw are those of
        ``transformers`` ``generate`` (top_k 50 is its default, which MiniGPT-v2's chat inherits),
        so results match it token for token, save a repetition penalty on padded rows (see
        :meth:`_continue`). Greedy answers are the same whichever items share the call and
        either way of ``reuse_prefix``: each row sees exactly its own prompt. Sampling draws
        from ``generator`` (on the decoder's device) if given, else from torch's global RNG,
        one draw per step for all rows together. So a seeded call is repeatable given the same
        items in the same order, but a row's random numbers depend on the rows decoded beside
        it: an instruction sampled beside other items follows the same distribution as alone,
        not the same tokens.
        """
        asked = [(embeds, instructions) for embeds, instructions in items if instructions]
        if not asked:
            return [[] for _ in items]
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if do_sample and not (temperature > 0 and 0 < top_p <= 1 and top_k >= 0):
            raise ValueError(
                "need temperature > 0, 0 < top_p <= 1 and top_k >= 0, "
                f"got {temperature}, {top_p}, {top_k}"
            )
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        processors = _logits_processors(do_sample, temperature, top_p, top_k, repetition_penalty)
        with self._lock, torch.inference_mode():
            groups = [self._rows(embeds, instructions) for embeds, instructions in asked]
            cache = _Cache(self.llm.config.num_hidden_layers)
            if reuse_prefix:
                logits, attention_mask = self._prefill_shared(groups, cache)
            else:
                batch = self._left_pad([row for rows in groups for row in rows])
                logits = _next_logits(
                    self.llm,
                    cache,
                    batch.attention_mask,
                    _positions(batch.attention_mask),
                    inputs_embeds=batch.inputs_embeds,
                )
                attention_mask = batch.attention_mask
            if self._static is None:
                step = self._growing_steps(attention_mask, cache, max_new_tokens)
            else:
                step = self._static.start(cache, attention_mask, max_new_tokens, self.pad_id)
                del cache  # copied: the prompt's own cache is not needed any more
            generated = self._continue(
                logits, step, max_new_tokens, processors, do_sample, generator
            )
        # A finished row is filled with the pad id (which may be EOS) up to the longest row.
        answers = iter(
            [ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids for ids in generated]
        )
        return [[next(answers) for _ in instructions] for _, instructions in items]

    def _prefill_shared(
        self, groups: list[list[_Row]], cache: _Cache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run each group's shared prefix once, then every row's own suffix against its copy.

        A group is the rows of one item. Its prefix is the longest run of tokens all its prompts
        start with: BOS, the template and every frame's 256 image rows, and whatever text the
        instructions share. The groups' prefixes run as one batch, padded on the left to the
        longest; each group's cache row is then copied to each of its rows, and the suffixes are
        padded on the left, i.e. *between* the prefix and each suffix. Every padding slot is
        masked out and the position ids skip it, so each row sees exactly the sequence it would
        see alone.
        """
        shared = [_common_prefix_length([ids for ids, _ in rows]) for rows in groups]
        prefixes = self._left_pad(
            [(rows[0][0][:n], rows[0][1][:n]) for rows, n in zip(groups, shared, strict=True)]
        )
        _next_logits(
            self.llm,
            cache,
            prefixes.attention_mask,
            _positions(prefixes.attention_mask),
            inputs_embeds=prefixes.inputs_embeds,
        )
        # Which group each row belongs to; indexing with repeated indices copies a cache row.
        owner = torch.tensor(
            [group for group, rows in enumerate(groups) for _ in rows], device=self.device
        )
        cache.batch_select_indices(owner)
        suffixes = self._left_pad(
            [
                (ids[n:], embeds[n:])
                for rows, n in zip(groups, shared, strict=True)
                for ids, embeds in rows
            ]
        )
        attention_mask = torch.cat(
            [prefixes.attention_mask.index_select(0, owner), suffixes.attention_mask], dim=1
        )
        logits = _next_logits(
            self.llm,
            cache,
            attention_mask,
            _positions(attention_mask)[:, prefixes.attention_mask.shape[1] :],
            inputs_embeds=suffixes.inputs_embeds,
        )
        return logits, attention_mask

    def _growing_steps(
        self, attention_mask: torch.Tensor, cache: _Cache, max_new_tokens: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The step function of the ``eager`` way: each row's new token id -> its next logits."""
        # Each step but the last adds one position.
        cache.reserve(max_new_tokens - 1)
        mask = attention_mask

        def step(next_ids: torch.Tensor) -> torch.Tensor:
            nonlocal mask
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            return _next_logits(
                self.llm, cache, mask, _positions(mask)[:, -1:], input_ids=next_ids[:, None]
            )

        return step

    def _continue(
        self,
        logits: torch.Tensor,
        step: Callable[[torch.Tensor], torch.Tensor],
        max_new_tokens: int,
        processors: LogitsProcessorList,
        do_sample: bool,
        generator: torch.Generator | None,
    ) -> list[list[int]]:
        """The decoding loop of ``transformers`` ``generate`` (greedy or multinomial sampling).

        ``logits`` are each row's first; ``step`` takes each row's new token id and returns its
        next logits.
        """
        batch = logits.shape[0]
        # Only new tokens, as generate sees them when given just inputs_embeds: a repetition
        # penalty applies to every new token and never to the prompt, as with MiniGPT-v2's
        # transformers 4.30 (5.x generate also exempts a left-padded row's first new tokens).
        generated = torch.empty((batch, 0), dtype=torch.long, device=self.device)
        unfinished = torch.ones(batch, dtype=torch.bool, device=self.device)
        for done in range(max_new_tokens):
            # transformers annotates input_ids as the legacy torch.LongTensor class, which no
            # tensor has statically; ``generated`` is a long tensor
            scores = processors(generated, logits)  # type: ignore[arg-type]
            if do_sample:
                probs = torch.softmax(scores, dim=-1)
                next_ids = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                next_ids = torch.argmax(scores, dim=-1)
            next_ids = torch.where(unfinished, next_ids, self.pad_id)
            generated = torch.cat([generated, next_ids[:, None]], dim=1)
            unfinished &= next_ids != self.eos_id
            if done + 1 == max_new_tokens or not bool(unfinished.any()):
                break
            logits = step(next_ids)
        return generated.tolist()

    def _decode(self, ids: list[int]) -> str:
        # decode's annotation has no overload: one sequence of ids gives a str, only a batch a list
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[assignment]
        # As MiniGPT-v2: an answer that restates the prompt keeps only what follows it.
        return text.split(_END_OF_PROMPT)[-1].strip()


def _next_logits(
    llm: LlamaForCausalLM,
    cache: Cache,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    inputs_embeds: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Extend the cache by the given positions; the next-token logits of each row, in fp32."""
    output = llm(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return output.logits[:, -1].to(dtype=torch.float32)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only unmasked slots, as ``generate`` derives them from the mask."""
    return (attention_mask.cumsum(dim=1) - 1).masked_fill(attention_mask == 0, 0)


def _common_prefix_length(rows: list[list[int]]) -> int:
    """How many leading ids all rows share, leaving each row at least one id of its own.

    The last prompt position yields the first answer token, so it must be computed per row even
    when two prompts are equal (or one is a prefix of another).
    """
    limit = min(len(ids) for ids in rows) - 1
    length = 0
    while length < limit and all(ids[length] == rows[0][length] for ids in rows):
        length += 1
    return length


def _logits_processors(
    do_sample: bool, temperature: float, top_p: float, top_k: int, repetition_penalty: float
) -> LogitsProcessorList:
    # The same processors, in the same order and under the same neutral-value conditions, as
    # GenerationMixin._get_logits_processor builds them.
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
    if do_sample:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k != 0:
            processors.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=top_p))
    return processors
