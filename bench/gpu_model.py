"""Full-size SkyEyeGPT architecture with random weights: encoder and decoder throughput, memory.

EVA ViT-g/14 at 448 px + ln_vision + 1x4 merge + llama_proj, and a Llama-2-7B-shaped decoder,
built directly on the device in bf16 (random weights: throughput does not depend on the values).
Prints, at each batch size: encoder images/s and its share of the card's peak; decoder tokens/s
over the tasks of one tile, with the shared image prefix computed once (the serving path), each
way of stepping asked for (``--steps``: the growing cache, or the static one compiled with CUDA
graphs), against the memory-bandwidth bound (every step reads all the weights), and without the
prefix reused; the time to the first token; and the peak device memory of that batch.

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
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from skyeye.cli.arguments import bounded, count
from skyeye.model import TextDecoder, prompts
from skyeye.model.architecture import VisionStage, llama_config
from skyeye.model.config import ModelConfig
from skyeye.model.vocabulary import tiny_tokenizer
from skyeye.settings import DecodeSteps

# The figures: usable bf16 dense TFLOP/s, and memory bandwidth in TB/s, by card.
PEAK_TFLOPS = 790.0
BANDWIDTH_TBS = {"H100": 3.35, "H200": 4.8}

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
    ids = decoder.generate_ids(
        embeds, instructions, max_new_tokens=new_tokens, reuse_prefix=reuse_prefix
    )
    produced.append(sum(len(row) for row in ids))


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _build(
    config: ModelConfig, device: torch.device, dtype: torch.dtype
) -> tuple[VisionStage, LlamaForCausalLM, PreTrainedTokenizerBase, float]:
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
    return vision, llm, tokenizer, built


def _measure(
    vision: VisionStage,
    decoders: dict[DecodeSteps, TextDecoder],
    batch: int,
    *,
    size: int,
    device: torch.device,
    dtype: torch.dtype,
    new_tokens: int,
    repeats: int,
    bound_steps_per_s: float | None,
    image_flops: int,
) -> dict[str, float | int | None]:
    """One row of the report: encoder and decoder speed at ``batch``, and the peak memory.

    ``bound_steps_per_s``: decoding steps a second if each only read the weights at the card's
    bandwidth; ``image_flops``: one image's encoder FLOPs.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        enc_s = _timed(functools.partial(vision, pixels), device, repeats)
        embeds = vision(pixels[:1])[0]
    instructions = [TASKS[i % len(TASKS)] for i in range(batch)]
    row: dict[str, float | int | None] = {
        "batch": batch,
        "encoder_images_per_s": round(batch / enc_s, 2),
        "encoder_share_of_peak": round(batch * image_flops / enc_s / (PEAK_TFLOPS * 1e12), 3),
        "decoder_bound_tokens_per_s": (
            None if bound_steps_per_s is None else round(batch * bound_steps_per_s, 1)
        ),
    }
    eager = decoders["eager"]
    runs = [(steps, True, decoder) for steps, decoder in decoders.items()]
    for steps, reuse, decoder in [*runs, ("eager", False, eager)]:
        produced: list[int] = []
        decode = functools.partial(
            _decode, decoder, embeds, instructions, new_tokens, reuse, produced
        )
        first_s = time.perf_counter()
        decode()  # the first call of a shape: records its CUDA graphs, for compiled steps
        _sync(device)
        first_s = time.perf_counter() - first_s
        dec_s = _timed(decode, device, repeats)
        key = "decoder_tokens_per_s" + ("" if reuse else "_no_reuse")
        if steps != "eager":
            key += f"_{steps}"
            row[f"decoder_first_call_s_{steps}"] = round(first_s, 1)
        row[key] = round(produced[-1] / dec_s, 1)
        if reuse and bound_steps_per_s is not None:
            row[key.replace("tokens_per_s", "share_of_bound")] = round(
                produced[-1] / dec_s / (batch * bound_steps_per_s), 3
            )
    row["decoder_tokens_per_call"] = produced[-1]
    first = functools.partial(_decode, eager, embeds, instructions, 1, True, [])
    row["first_token_ms"] = round(1000 * _timed(first, device, repeats), 1)
    row["peak_memory_gib"] = _peak_gib(device)
    return row


def _print_table(report: dict[str, Any], dtype: str) -> None:
    """The report for people: one line about the model, then one row per batch size."""
    print(
        f"{report['config']} model on {report['device']} ({dtype}, attention "
        f"{report['attention']}), built in {report['build_s']} s, weights "
        f"{report['weights_gib']} GiB ({report['llm_weight_bytes'] / 1e9:.2f} GB of Llama "
        f"weights read per step); bandwidth {report['bandwidth_tbs']} TB/s, peak {PEAK_TFLOPS} "
        f"TFLOP/s; torch {report['torch']}, transformers {report['transformers']}; decoder "
        f"warm-up (compiling) s: {report['warm_up_s']}"
    )
    columns = [
        ("batch", "batch"),
        ("encoder img/s", "encoder_images_per_s"),
        ("of peak", "encoder_share_of_peak"),
        ("bound tok/s", "decoder_bound_tokens_per_s"),
    ]
    for steps in report["steps"]:
        suffix = "" if steps == "eager" else f"_{steps}"
        columns += [
            (f"{steps} tok/s", f"decoder_tokens_per_s{suffix}"),
            ("of bound", f"decoder_share_of_bound{suffix}"),
        ]
        if steps != "eager":
            columns.append(("first call s", f"decoder_first_call_s{suffix}"))
    columns += [
        ("no reuse tok/s", "decoder_tokens_per_s_no_reuse"),
        ("tokens/call", "decoder_tokens_per_call"),
        ("first token ms", "first_token_ms"),
        ("peak GiB", "peak_memory_gib"),
    ]
    print("  ".join(f"{title:>{len(title)}}" for title, _ in columns))
    for r in report["rows"]:
        print("  ".join(f"{r.get(key)!s:>{len(title)}}" for title, key in columns))


def _bandwidth_tbs(device: torch.device, given: float | None) -> float | None:
    """The card's memory bandwidth: as given, else the issue's figure for its name."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((tbs for card, tbs in BANDWIDTH_TBS.items() if card in name), None)


def main() -> None:
    """Build the model on --device and print its throughput and memory at each batch size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions (a smoke check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batches", type=count, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=count, default=64, help="decoded tokens per row")
    parser.add_argument("--repeats", type=count, default=3)
    parser.add_argument(
        "--steps",
        nargs="+",
        default=["eager", "compiled"],
        choices=["eager", "static", "compiled"],
        help="ways of stepping the decoder to time (SKYEYE_DECODING__STEPS); eager always runs",
    )
    parser.add_argument(
        "--bandwidth-tbs",
        type=bounded(float, 1e-9),
        help="the card's memory bandwidth for the bound (default: 3.35 on an H100, 4.8 on an "
        "H200, none elsewhere)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config = ModelConfig.tiny() if args.tiny else ModelConfig.published()
    vision, llm, tokenizer, built = _build(config, device, dtype)
    weights_gib = _peak_gib(device)
    size = config.vision.image_size
    steps: list[DecodeSteps] = ["eager", *(s for s in args.steps if s != "eager")]
    decoders = {s: TextDecoder(config, llm, tokenizer, steps=s) for s in steps}
    warm_up_s = {}
    for s, decoder in decoders.items():
        started = time.perf_counter()
        decoder.warm_up()  # compiles, for compiled steps, as a replica does when it starts
        _sync(device)
        warm_up_s[s] = round(time.perf_counter() - started, 1)
    llm_bytes = sum(p.numel() * p.element_size() for p in llm.parameters())
    bandwidth = _bandwidth_tbs(device, args.bandwidth_tbs)
    with torch.inference_mode(), FlopCounterMode(display=False) as flops:
        vision(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    rows = [
        _measure(
            vision,
            decoders,
            batch,
            size=size,
            device=device,
            dtype=dtype,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            bound_steps_per_s=None if bandwidth is None else bandwidth * 1e12 / llm_bytes,
            image_flops=flops.get_total_flops(),
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
        "llm_weight_bytes": llm_bytes,
        "encoder_flop_per_image": flops.get_total_flops(),
        "bandwidth_tbs": bandwidth,
        "steps": steps,
        "warm_up_s": warm_up_s,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    _print_table(report, args.dtype)


if __name__ == "__main__":
    main()
