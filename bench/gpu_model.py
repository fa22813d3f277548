"""Full-size SkyEyeGPT architecture with random weights: encoder and decoder throughput, memory.

EVA ViT-g/14 at 448 px + ln_vision + 1x4 merge + llama_proj, and a Llama-2-7B-shaped decoder,
built directly on the device in bf16 (random weights: throughput does not depend on the values).
Prints, at each batch size: encoder images/s; decoder tokens/s over the tasks of one tile, with
the shared image prefix computed once (the serving path) and without (every row prefilled in
full); the time to the first token; and the peak device memory of that batch.

    python bench/gpu_model.py                 # on a CUDA machine, the published dimensions
    python bench/gpu_model.py --tiny --device cpu --batches 1 2   # a quick check anywhere
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers
from transformers import LlamaForCausalLM

from skyeye.model import TextDecoder, prompts
from skyeye.model.architecture import VisionStage, llama_config
from skyeye.model.config import ModelConfig
from skyeye.model.vocabulary import tiny_tokenizer

TASKS = [
    prompts.caption(),
    prompts.detection("building"),
    prompts.vqa("Is there any water in the image?"),
    prompts.vqa("How many vehicles are there?"),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator, caches
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _decode(
    decoder: TextDecoder,
    embeds: torch.Tensor,
    instructions: list[str],
    new_tokens: int,
    reuse_prefix: bool,
    produced: list[int],
) -> None:
    # random weights may stop a row early at EOS: count what was really decoded
    ids = decoder.generate_ids(embeds, instructions, new_tokens, reuse_prefix=reuse_prefix)
    produced.append(sum(len(row) for row in ids))


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _build(
    config: ModelConfig, device: torch.device, dtype: torch.dtype
) -> tuple[VisionStage, LlamaForCausalLM, TextDecoder, float]:
    """Build the encoder and decoder with random weights; returns them and the seconds taken."""
    tokenizer = tiny_tokenizer()  # ids fit any vocabulary; the text is irrelevant here
    torch.manual_seed(0)
    built = time.perf_counter()
    # built in the target dtype on the device: a 7B model never exists in fp32 anywhere
    torch.set_default_dtype(dtype)
    with device:
        vision = VisionStage(config).eval()
        llm_cfg = llama_config(
            config,
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
        )
        llm_cfg.attn_implementation = "sdpa"
        llm = LlamaForCausalLM(llm_cfg).eval()
    torch.set_default_dtype(torch.float32)
    built = time.perf_counter() - built
    return vision, llm, TextDecoder(config, llm, tokenizer), built


def _measure(
    vision: VisionStage,
    decoder: TextDecoder,
    batch: int,
    *,
    size: int,
    device: torch.device,
    dtype: torch.dtype,
    new_tokens: int,
    repeats: int,
) -> dict[str, float | int | None]:
    """One row of the report: encoder and decoder speed at ``batch``, and the peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        enc_s = _timed(lambda p=pixels: vision(p), device, repeats)
        embeds = vision(pixels[:1])[0]
    instructions = [TASKS[i % len(TASKS)] for i in range(batch)]
    row: dict[str, float | int | None] = {
        "batch": batch,
        "encoder_images_per_s": round(batch / enc_s, 2),
    }
    for reuse in (True, False):
        produced: list[int] = []
        decode = functools.partial(
            _decode, decoder, embeds, instructions, new_tokens, reuse, produced
        )
        dec_s = _timed(decode, device, repeats)
        key = "decoder_tokens_per_s" + ("" if reuse else "_no_reuse")
        row[key] = round(produced[-1] / dec_s, 1)
    row["decoder_tokens_per_call"] = produced[-1]
    first = functools.partial(_decode, decoder, embeds, instructions, 1, True, [])
    row["first_token_ms"] = round(1000 * _timed(first, device, repeats), 1)
    row["peak_memory_gib"] = _peak_gib(device)
    return row


def _print_table(report: dict[str, Any], dtype: str) -> None:
    """The report for people: one line about the model, then one row per batch size."""
    print(
        f"{report['config']} model on {report['device']} ({dtype}, attention "
        f"{report['attention']}), built in {report['build_s']} s, weights "
        f"{report['weights_gib']} GiB; torch {report['torch']}, "
        f"transformers {report['transformers']}"
    )
    columns = [
        ("batch", "batch"),
        ("encoder img/s", "encoder_images_per_s"),
        ("decoder tok/s", "decoder_tokens_per_s"),
        ("no reuse tok/s", "decoder_tokens_per_s_no_reuse"),
        ("tokens/call", "decoder_tokens_per_call"),
        ("first token ms", "first_token_ms"),
        ("peak GiB", "peak_memory_gib"),
    ]
    print("  ".join(f"{title:>{len(title)}}" for title, _ in columns))
    for r in report["rows"]:
        print("  ".join(f"{r[key]!s:>{len(title)}}" for title, key in columns))


def main() -> None:
    """Build the model on --device and print its throughput and memory at each batch size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions (a smoke check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config = ModelConfig.tiny() if args.tiny else ModelConfig.published()
    vision, llm, decoder, built = _build(config, device, dtype)
    weights_gib = _peak_gib(device)
    size = config.vision.image_size
    rows = [
        _measure(
            vision,
            decoder,
            batch,
            size=size,
            device=device,
            dtype=dtype,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
        )
        for batch in args.batches
    ]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "config": "tiny" if args.tiny else "published",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attention": {
            "vision": vision.vision_model.config._attn_implementation,
            "llm": llm.config._attn_implementation,
        },
        "build_s": round(built, 1),
        "weights_gib": weights_gib,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    _print_table(report, args.dtype)


if __name__ == "__main__":
    main()
