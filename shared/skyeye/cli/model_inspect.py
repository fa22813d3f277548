"""``skyeye model inspect``: check the published SkyEyeGPT files, then caption with them.

It accounts for every tensor of the published files, then captions a sample image with the
assembled model.

Heavy imports (torch, transformers) wait for :func:`run`, so that adding the parser to the CLI
costs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from skyeye.cli.arguments import count

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``inspect`` to the subparsers of the CLI's ``model`` command."""
    p = commands.add_parser(
        "inspect",
        help="account for every tensor of the published SkyEyeGPT files, then caption a sample",
    )
    p.add_argument("--vision", type=Path, required=True, help="LAVIS/BLIP-2 eva_vit_g.pth")
    p.add_argument("--llm", type=Path, required=True, help="Hugging Face Llama-2-7b-chat folder")
    p.add_argument("--checkpoint", type=Path, required=True, help="SkyEyeGPT .pth checkpoint")
    p.add_argument(
        "--arch-config",
        type=Path,
        help="JSON ModelConfig (default: the published dimensions, LoRA r 64, alpha 16)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--no-run", action="store_true", help="only compare names and shapes; load no weights"
    )
    p.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="after a clean report, write the assembled model (LoRA merged, bf16) as a SkyEye "
        "model folder to serve with SKYEYE_MODEL_DIR=DIR",
    )
    p.add_argument("--device", help="where to run the caption (default: cuda if present, else cpu)")
    p.add_argument(
        "--max-new-tokens", type=count, default=40, help="caption length limit (default 40)"
    )
    p.set_defaults(func=run)


def _caption(args: argparse.Namespace, arch: Any) -> tuple[str, str]:
    import numpy as np
    import torch
    from PIL import Image

    from skyeye.model import prompts
    from skyeye.model.published import load_published
    from skyeye.samples import aerial_photos
    from skyeye.settings import Settings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_published(args.vision, args.llm, args.checkpoint, arch, device=device)
    path = aerial_photos()[0]
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    embeds = model.encoder().encode([pixels])
    # the prompt's BOS form as the pipeline's setting has it (SKYEYE_DECODING__DOUBLE_BOS)
    double_bos = Settings().decoding.double_bos
    answer = model.decoder(double_bos=double_bos).generate(
        embeds[0], [prompts.caption()], max_new_tokens=args.max_new_tokens
    )[0]
    return path.name, answer


def run(args: argparse.Namespace) -> int:
    """Run ``skyeye model inspect``; returns its exit status.

    0: every tensor accounted for (and captioned unless --no-run); 1: the report lists problems;
    2: a file could not be read.
    """
    from pydantic import ValidationError

    from skyeye.model.checkpoint import CheckpointError
    from skyeye.model.config import ModelConfig
    from skyeye.model.published import convert_published, inspect_published

    try:
        arch = (
            ModelConfig.model_validate_json(args.arch_config.read_bytes())
            if args.arch_config
            else ModelConfig.published()
        )
    except (OSError, ValidationError) as exc:
        print(f"error: arch config {args.arch_config}: {exc}", file=sys.stderr)
        return 2
    try:
        report = inspect_published(args.vision, args.llm, args.checkpoint, arch)
        caption = _caption(args, arch) if report.ok and not args.no_run else None
        if report.ok and args.save:
            convert_published(args.vision, args.llm, args.checkpoint, args.save, arch)
    except (CheckpointError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        output = {
            "report": report.model_dump(mode="json"),
            "caption": None if caption is None else {"image": caption[0], "text": caption[1]},
        }
        print(json.dumps(output, indent=2))
    else:
        print(report.summary())
        if caption is not None:
            print(f"caption of {caption[0]}: {caption[1]}")
    return 0 if report.ok else 1
