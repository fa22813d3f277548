"""Stage 2: image embeddings + instructions -> answers, with the Llama decoder (MiniGPT-v2 style).

Each prompt is ``wrap(instruction, n_frames)`` split at ``<ImageHere>``; the text segments are
tokenized, embedded, and the image embeddings are spliced between them. Rows of a batch (several
instructions about the same image) are left-padded, as MiniGPT-v2 does, with zero embeddings and
a zero attention mask; ``generate`` derives the position ids from that mask, so a padded row is
decoded exactly as it would be alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from skyeye.model import checkpoint
from skyeye.model.config import ModelConfig
from skyeye.model.prompts import IMAGE_PLACEHOLDER, wrap

__all__ = ["IMAGE_TOKEN", "PromptBatch", "TextDecoder"]

# Marks image positions in PromptBatch.token_ids (never a real token id).
IMAGE_TOKEN = -1

_END_OF_PROMPT = "[/INST]"


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded decoder input: one row per instruction."""

    token_ids: torch.Tensor  # (B, L) long; IMAGE_TOKEN at image positions, pad id at padding
    attention_mask: torch.Tensor  # (B, L) long; 0 at padding
    inputs_embeds: torch.Tensor  # (B, L, H)


class TextDecoder:
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

    @classmethod
    def load(cls, path: Path, device: str = "cpu", dtype: torch.dtype | None = None) -> TextDecoder:
        config, llm, tokenizer = checkpoint.load_llm(
            path, device, dtype or checkpoint.default_dtype(device)
        )
        return cls(config, llm, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.llm.device

    def _segment_ids(self, instruction: str, n_frames: int) -> list[list[int]]:
        segments = wrap(instruction, n_frames).split(IMAGE_PLACEHOLDER)
        # BOS exactly once, at the start: only the first segment gets special tokens. MiniGPT-v2's
        # template text begins with a literal "<s>" *and* tokenizes that segment with
        # add_special_tokens=True, which gives two BOS tokens with the slow Llama tokenizer; we
        # keep one, the form Llama-2 was trained with. split_special_tokens keeps an instruction
        # that contains "</s>" or "<s>" from injecting control tokens.
        return [
            self.tokenizer(segment, add_special_tokens=i == 0, split_special_tokens=True).input_ids
            for i, segment in enumerate(segments)
        ]

    def prompt_batch(self, image_embeds: torch.Tensor, instructions: list[str]) -> PromptBatch:
        frames = self._frames(image_embeds)
        n_frames, n_tokens, hidden = frames.shape
        embed = self.llm.get_input_embeddings()
        frames = frames.to(device=self.device, dtype=embed.weight.dtype)
        image_ids = [IMAGE_TOKEN] * n_tokens
        rows_ids: list[list[int]] = []
        rows_embeds: list[torch.Tensor] = []
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
            rows_ids.append(ids)
            rows_embeds.append(torch.cat(parts))
        length = max(len(ids) for ids in rows_ids)
        batch = len(instructions)
        token_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        inputs_embeds = frames.new_zeros((batch, length, hidden))
        for row, (ids, embeds) in enumerate(zip(rows_ids, rows_embeds, strict=True)):
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
    ) -> list[str]:
        """One raw answer per instruction, all about the same image (or the same frames)."""
        rows = self.generate_ids(
            image_embeds, instructions, max_new_tokens, do_sample, temperature, top_p
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
    ) -> list[list[int]]:
        """The new token ids of each row, up to (excluding) its first EOS."""
        if not instructions:
            return []
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if do_sample and not (temperature > 0 and 0 < top_p <= 1):
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=1,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            bos_token_id=self.tokenizer.bos_token_id,
            **sampling,
        )
        with torch.inference_mode():
            batch = self.prompt_batch(image_embeds, instructions)
            # With only inputs_embeds given, generate returns just the new tokens.
            output = self.llm.generate(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                generation_config=generation_config,
            )
        rows = output.tolist()
        # A finished row is filled with the pad id (which may be EOS) up to the longest row.
        return [ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids for ids in rows]

    def _decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        # As MiniGPT-v2: an answer that restates the prompt keeps only what follows it.
        return text.split(_END_OF_PROMPT)[-1].strip()
