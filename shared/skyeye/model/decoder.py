"""Stage 2: image embeddings + instructions -> answers, with the Llama decoder (MiniGPT-v2 style).

Each prompt is ``wrap(instruction, n_frames)`` split at ``<ImageHere>``; the text segments are
tokenized, embedded, and the image embeddings are spliced between them. Rows of a batch (several
instructions about the same image) share everything up to the end of the last image, so by default
that prefix is run through the decoder once and its key/value cache is copied to every row; only
the rows' own suffixes are batched, padded and masked so that each row is decoded exactly as it
would be alone. The plain path (``reuse_prefix=False``) left-pads whole prompts, as MiniGPT-v2
does. Decoding is our own loop over ``transformers``' logits processors rather than ``generate``:
``generate`` cannot continue a batch from a shared cache with padding inside the sequence, and it
fills every setting left unset from the checkpoint's own ``generation_config.json``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    DynamicCache,
    LlamaForCausalLM,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from skyeye.model import checkpoint
from skyeye.model.config import ModelConfig
from skyeye.model.prompts import IMAGE_PLACEHOLDER, wrap

__all__ = ["IMAGE_TOKEN", "PromptBatch", "TextDecoder"]

# Marks image positions in PromptBatch.token_ids (never a real token id).
IMAGE_TOKEN = -1

_END_OF_PROMPT = "[/INST]"

# Tokenized prompts kept per decoder. Tasks repeat a few instructions (every tile gets the same
# ones; training draws from under a hundred), and tokenizing one took about a millisecond of host
# time (world instructions, 2-core CPU), which a GPU step would otherwise wait on.
_CACHED_PROMPTS = 1024


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded decoder input: one row per instruction."""

    token_ids: torch.Tensor  # (B, L) long; IMAGE_TOKEN at image positions, pad id at padding
    attention_mask: torch.Tensor  # (B, L) long; 0 at padding
    inputs_embeds: torch.Tensor  # (B, L, H)


class TextDecoder:
    """Stage 2 of the served model: decodes answers to instructions about already encoded images."""

    def __init__(
        self, config: ModelConfig, llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise ValueError("the tokenizer has no EOS token")
        self.eos_id: int = eos_id
        # Llama-2 defines no pad token (MiniGPT-v2 borrows "$$"); padded positions are masked and
        # finished rows are cut at EOS, so the pad id only has to be a valid id.
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
        self._segment_ids = functools.lru_cache(maxsize=_CACHED_PROMPTS)(self._tokenize)

    @classmethod
    def load(cls, path: Path, device: str = "cpu", dtype: torch.dtype | None = None) -> TextDecoder:
        """The language stage from a model folder, in ``dtype`` or else the device's default."""
        config, llm, tokenizer = checkpoint.load_llm(
            path, device, dtype or checkpoint.default_dtype(device)
        )
        return cls(config, llm, tokenizer)

    @property
    def device(self) -> torch.device:
        """Where the Llama decoder's weights are, and so where its prompts and caches must be."""
        return self.llm.device

    def _tokenize(self, instruction: str, n_frames: int) -> tuple[tuple[int, ...], ...]:
        """The token ids of each text segment of the prompt, around its ``n_frames`` images."""
        segments = wrap(instruction, n_frames).split(IMAGE_PLACEHOLDER)
        # BOS exactly once, at the start: only the first segment gets special tokens. MiniGPT-v2's
        # template text begins with a literal "<s>" *and* tokenizes that segment with
        # add_special_tokens=True, which gives two BOS tokens with the slow Llama tokenizer; we
        # keep one, the form Llama-2 was trained with. split_special_tokens keeps an instruction
        # that contains "</s>" or "<s>" from injecting control tokens.
        return tuple(
            tuple(
                self.tokenizer(
                    segment, add_special_tokens=i == 0, split_special_tokens=True
                ).input_ids
            )
            for i, segment in enumerate(segments)
        )

    def prompt_batch(self, image_embeds: torch.Tensor, instructions: list[str]) -> PromptBatch:
        """The whole prompts, left-padded: the layout of the no-reuse path (and of MiniGPT-v2)."""
        return self._left_pad(self._rows(image_embeds, instructions))

    def _rows(
        self, image_embeds: torch.Tensor, instructions: list[str]
    ) -> list[tuple[list[int], torch.Tensor]]:
        """(token ids, input embeddings) of each prompt, unpadded."""
        frames = self._frames(image_embeds)
        n_frames, n_tokens, _ = frames.shape
        embed = self.llm.model.embed_tokens
        frames = frames.to(device=self.device, dtype=embed.weight.dtype)
        image_ids = [IMAGE_TOKEN] * n_tokens
        rows: list[tuple[list[int], torch.Tensor]] = []
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

    def _left_pad(self, rows: list[tuple[list[int], torch.Tensor]]) -> PromptBatch:
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
        instructions: list[str],
        max_new_tokens: int = 24,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        *,
        top_k: int = 50,
        repetition_penalty: float = 1.0,
        generator: torch.Generator | None = None,
        reuse_prefix: bool = True,
    ) -> list[str]:
        """One raw answer per instruction, all about the same image (or the same frames)."""
        rows = self.generate_ids(
            image_embeds,
            instructions,
            max_new_tokens,
            do_sample,
            temperature,
            top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            generator=generator,
            reuse_prefix=reuse_prefix,
        )
        return [self._decode(ids) for ids in rows]

    def generate_ids(
        self,
        image_embeds: torch.Tensor,
        instructions: list[str],
        max_new_tokens: int = 24,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        *,
        top_k: int = 50,
        repetition_penalty: float = 1.0,
        generator: torch.Generator | None = None,
        reuse_prefix: bool = True,
    ) -> list[list[int]]:
        """The new token ids of each row, up to (excluding) its first EOS.

        Greedy unless ``do_sample``; the logits processors and the sampling draw are those of
        ``transformers`` ``generate`` (top_k 50 is its default, which MiniGPT-v2's chat inherits),
        so results match it token for token, save a repetition penalty on padded rows (see
        :meth:`_continue`). Sampling draws from ``generator`` (on the decoder's device) if given,
        else from torch's global RNG. ``reuse_prefix`` computes the prompt part that all rows
        share once (see :meth:`_prefill_shared`); the answers are the same either way.
        """
        if not instructions:
            return []
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
        with torch.inference_mode():
            rows = self._rows(image_embeds, instructions)
            cache = DynamicCache(config=self.llm.config)
            if reuse_prefix:
                logits, attention_mask = self._prefill_shared(rows, cache)
            else:
                batch = self._left_pad(rows)
                logits = self._forward(
                    cache,
                    batch.attention_mask,
                    _positions(batch.attention_mask),
                    inputs_embeds=batch.inputs_embeds,
                )
                attention_mask = batch.attention_mask
            generated = self._continue(
                logits, attention_mask, cache, max_new_tokens, processors, do_sample, generator
            )
        # A finished row is filled with the pad id (which may be EOS) up to the longest row.
        return [ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids for ids in generated]

    def _prefill_shared(
        self, rows: list[tuple[list[int], torch.Tensor]], cache: DynamicCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the shared prefix once, then every row's own suffix against copies of its cache.

        The prefix is the longest run of tokens all prompts start with: BOS, the template and every
        frame's 256 image rows, and whatever text the instructions share. The suffixes are padded
        on the left, i.e. *between* the prefix and each suffix; those slots are masked out and the
        position ids skip them, so each row sees exactly the sequence it would see alone.
        """
        shared = _common_prefix_length([ids for ids, _ in rows])
        prefix = rows[0][1][:shared].unsqueeze(0)
        prefix_mask = torch.ones((1, shared), dtype=torch.long, device=self.device)
        self._forward(cache, prefix_mask, _positions(prefix_mask), inputs_embeds=prefix)
        cache.batch_repeat_interleave(len(rows))
        suffixes = self._left_pad([(ids[shared:], embeds[shared:]) for ids, embeds in rows])
        attention_mask = torch.cat(
            [prefix_mask.expand(len(rows), -1), suffixes.attention_mask], dim=1
        )
        logits = self._forward(
            cache,
            attention_mask,
            _positions(attention_mask)[:, shared:],
            inputs_embeds=suffixes.inputs_embeds,
        )
        return logits, attention_mask

    def _forward(
        self,
        cache: DynamicCache,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *,
        inputs_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Extend the cache by the given positions; the next-token logits of each row, in fp32."""
        output = self.llm(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1].to(dtype=torch.float32)

    def _continue(
        self,
        logits: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: DynamicCache,
        max_new_tokens: int,
        processors: LogitsProcessorList,
        do_sample: bool,
        generator: torch.Generator | None,
    ) -> list[list[int]]:
        """The decoding loop of ``transformers`` ``generate`` (greedy or multinomial sampling)."""
        batch = logits.shape[0]
        # Only new tokens, as generate sees them when given just inputs_embeds: a repetition
        # penalty applies to every new token and never to the prompt, as with MiniGPT-v2's
        # transformers 4.30 (5.x generate also exempts a left-padded row's first new tokens).
        generated = torch.empty((batch, 0), dtype=torch.long, device=self.device)
        unfinished = torch.ones(batch, dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
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
            if step + 1 == max_new_tokens or not bool(unfinished.any()):
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
            logits = self._forward(
                cache,
                attention_mask,
                _positions(attention_mask)[:, -1:],
                input_ids=next_ids[:, None],
            )
        return generated.tolist()

    def _decode(self, ids: list[int]) -> str:
        # decode's annotation has no overload: one sequence of ids gives a str, only a batch a list
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[assignment]
        # As MiniGPT-v2: an answer that restates the prompt keeps only what follows it.
        return text.split(_END_OF_PROMPT)[-1].strip()


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
