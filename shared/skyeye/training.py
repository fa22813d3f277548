"""Train skyeye-tiny on the procedural aerial world, on the CPU, reproducibly from a seed.

Two stages (their knobs are :class:`Stages`):

1. ``pretrain``: the vision tower alone learns dense targets, a per-patch class (background, each
   object class, water) through a throwaway linear head on its ``ln_vision`` patch tokens. From
   scratch, a tower trained only through the decoder's answer loss barely learns to look.
2. ``instruct``: tower (its top layers), ``llama_proj`` and the Llama decoder learn the answers of
   :func:`skyeye.world.make_samples`, loss on answer tokens only, with a difficulty curriculum.

Prompts are assembled by :class:`TextDecoder` itself (its ``_rows``), so training sees exactly the
sequence inference builds; the answer tokens and EOS follow ``[/INST]``.

Reproducibility: every random draw comes from ``seed`` (torch's generator, and numpy generators
for scene seeds, difficulties and question choice). A time budget only decides the step counts,
from the pace of each stage's first steps, whose schedule (warm-up, then a plateau) does not depend
on them; the counts are logged, and passing them back (``pretrain_steps``, ``instruct_steps``)
repeats the run exactly.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import LlamaForCausalLM

from skyeye.model.architecture import VisionStage, llama_config
from skyeye.model.checkpoint import save_model
from skyeye.model.config import ModelConfig
from skyeye.model.decoder import TextDecoder
from skyeye.model.vision import preprocess
from skyeye.model.vocabulary import tiny_tokenizer
from skyeye.world import (
    OBJECT_CLASSES,
    TRAINING_SEED_LIMIT,
    Sample,
    Scene,
    held_out_scenes,
    make_samples,
    render_scene,
)

__all__ = ["LOG_FILE", "Stages", "TrainReport", "patch_labels", "train"]

LOG_FILE = "training.json"

# Per-patch classes of the pretraining head: background, the object classes, open water.
_WATER = 1 + len(OBJECT_CLASSES)
_PATCH_CLASSES = _WATER + 1
# An object claims a patch when it covers this share of it: small cars still get their patch.
_OBJECT_SHARE = 0.1
# Background is most patches; down-weighting it keeps the head from settling on "background".
_BACKGROUND_WEIGHT = 0.2
# The figures reported for stage 1 and the final evaluation use evaluation seed 1 (held-out
# scenes, never trained on), leaving seed 0 to the project's own figures.
_MEASURE_SEED = 1


@dataclass(frozen=True)
class Stages:
    """The training recipe. Step counts of None are sized from the time budget."""

    pretrain_share: float = 0.25  # of ``minutes``, for stage 1 (0 skips it)
    pretrain_steps: int | None = None
    pretrain_images: int = 8
    pretrain_lr: float = 2e-3
    instruct_steps: int | None = None
    images_per_step: int = 4
    questions_per_image: int = 8
    lr: float = 1e-3
    vision_lr: float = 3e-4
    # Top ViT layers trained in stage 2 (plus ln_vision); the rest stay as stage 1 left them, which
    # also spares their backward pass. Negative: all layers.
    tune_vision_layers: int = 1
    curriculum: bool = True
    # Rescale llama_proj so image tokens start at the norm of text embeddings.
    match_token_scale: bool = True
    kind_weights: Mapping[str, float] = field(
        default_factory=lambda: {
            "refer": 0.4,
            "detection": 0.1,
            "presence": 0.15,
            "count": 0.15,
            "scene": 0.1,
            "caption": 0.1,
        }
    )
    warmup_steps: int = 20
    progress_every: int = 10
    checkpoint_minutes: float = 5.0
    eval_scenes: int = 20  # after training, on held-out scenes (0: none)


@dataclass
class TrainReport:
    out_dir: Path
    seed: int
    pretrain_steps: int
    instruct_steps: int
    seconds: float
    patch_accuracy: dict[str, float]  # after stage 1 (empty when skipped)
    evaluation: dict[str, Any]  # family -> figures, after stage 2 (empty when not run)
    losses: list[tuple[str, int, float]]  # (stage, step, loss), every progress_every steps


def patch_labels(scene: Scene, grid: int) -> np.ndarray:
    """(grid, grid) int64 per-patch class: the object class covering most of the patch, if it
    covers at least ``_OBJECT_SHARE`` of it, else water if water is most of it, else background."""
    classes = scene.class_map().astype(np.int64)
    height, width = classes.shape
    cell_h, cell_w = height // grid, width // grid
    onehot = np.zeros((_PATCH_CLASSES, height, width), dtype=np.float32)
    np.put_along_axis(onehot, classes[None], 1.0, axis=0)
    onehot[_WATER] = scene.water & (classes == 0)
    shares = (
        onehot[:, : grid * cell_h, : grid * cell_w]
        .reshape(_PATCH_CLASSES, grid, cell_h, grid, cell_w)
        .mean(axis=(2, 4))
    )
    objects = shares[1:_WATER]
    labels = np.where(shares[_WATER] > 0.5, _WATER, 0)
    return np.where(objects.max(axis=0) >= _OBJECT_SHARE, 1 + objects.argmax(axis=0), labels)


def _cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up, a plateau until ``2 * warmup`` (both independent of ``total``,
    which a time budget only fixes then), then cosine down to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - 2 * warmup) / max(1, total - 2 * warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def _difficulty_cap(step: int, total: int, warmup: int, curriculum: bool) -> float:
    """The hardest difficulty drawn at this step: easy close-ups first, all of [0, 1] by 2/3."""
    if not curriculum:
        return 1.0
    progress = (step - 2 * warmup) / max(1, total - 2 * warmup)
    return min(1.0, 0.2 + 1.2 * max(0.0, progress))


def _patch_tokens(stage: VisionStage, pixels: torch.Tensor) -> torch.Tensor:
    """(B, patches, C) ViT tokens after ln_vision, CLS dropped: what VisionStage merges."""
    tower = stage.vision_model
    hidden = tower.encoder(inputs_embeds=tower.embeddings(pixels)).last_hidden_state
    return tower.post_layernorm(hidden)[:, 1:, :]


class _Run:
    """State shared by the stages: modules, tokenizer, RNGs, clock, log."""

    def __init__(
        self,
        out_dir: Path,
        seed: int,
        minutes: float,
        config: ModelConfig,
        stages: Stages,
        progress: Callable[[str], None],
    ) -> None:
        self.out_dir, self.seed, self.config, self.stages = out_dir, seed, config, stages
        self.progress = progress
        self.started = time.perf_counter()
        self.deadline = self.started + minutes * 60
        self.last_checkpoint = self.started
        torch.manual_seed(seed)
        self.tokenizer = tiny_tokenizer()
        self.vision = VisionStage(config)
        self.llm = LlamaForCausalLM(
            llama_config(
                config,
                bos_id=self.tokenizer.bos_token_id,
                eos_id=self.tokenizer.eos_token_id,
                pad_id=self.tokenizer.pad_token_id,
            )
        )
        self.decoder = TextDecoder(config, self.llm, self.tokenizer)
        # One generator per purpose, so that changing one stage's draws leaves the other's alone.
        self.scene_rng = np.random.default_rng([seed, 1])
        self.question_rng = np.random.default_rng([seed, 2])
        self.losses: list[tuple[str, int, float]] = []
        self.steps = {"pretrain": 0, "instruct": 0}
        self.patch_accuracy: dict[str, float] = {}
        self.evaluation: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def scenes(self, n: int, cap: float) -> list[Scene]:
        seeds = self.scene_rng.integers(0, TRAINING_SEED_LIMIT, size=n)
        difficulties = self.scene_rng.uniform(0.0, cap, size=n)
        return [
            render_scene(int(s), size=self.config.vision.image_size, difficulty=float(d))
            for s, d in zip(seeds, difficulties, strict=True)
        ]

    def sized(self, step: int, timed_from: float, budget_end: float) -> int:
        """The steps that fit before ``budget_end`` at the pace since step ``warmup_steps``."""
        now = time.perf_counter()
        pace = (now - timed_from) / max(1, step - self.stages.warmup_steps)
        return step + max(0, int((budget_end - now) / pace))

    def report(self, stage: str, step: int, total: int, loss: float, items: int, t0: float) -> None:
        self.losses.append((stage, step, loss))
        rate = items / max(1e-9, time.perf_counter() - t0)
        self.progress(
            f"{stage} step {step}/{total} loss {loss:.4f} {rate:.1f} samples/s "
            f"elapsed {self.elapsed() / 60:.1f} min"
        )

    def maybe_checkpoint(self, final: bool = False) -> None:
        due = time.perf_counter() - self.last_checkpoint >= self.stages.checkpoint_minutes * 60
        if final or due:
            self.save()
            self.last_checkpoint = time.perf_counter()

    def log(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "seed": self.seed,
            "stages": {**asdict(self.stages), "kind_weights": dict(self.stages.kind_weights)},
            "steps": self.steps,
            "losses": self.losses,
            "patch_accuracy": self.patch_accuracy,
            "evaluation": self.evaluation,
            "seconds": round(self.elapsed(), 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        }

    def save(self) -> None:
        """Replace ``out_dir`` by a complete folder: a killed run keeps the last good weights."""
        parent = self.out_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=parent))
        try:
            origin = {"builder": "skyeye.training", "seed": self.seed, "steps": self.steps}
            save_model(staging, self.config, self.vision, self.llm, self.tokenizer, origin=origin)
            (staging / LOG_FILE).write_text(json.dumps(self.log(), indent=1) + "\n")
            old = parent / f".{self.out_dir.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.out_dir.exists():
                os.rename(self.out_dir, old)
            os.rename(staging, self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # Stage 1 -------------------------------------------------------------------------------

    def pretrain(self, budget_end: float) -> None:
        stages, grid = self.stages, self.config.vision.grid_size
        head = nn.Linear(self.config.vision.hidden_size, _PATCH_CLASSES)
        params = [*self.vision.vision_model.parameters(), *head.parameters()]
        optimiser = torch.optim.AdamW(params, lr=stages.pretrain_lr, weight_decay=0.01)
        weights = torch.ones(_PATCH_CLASSES)
        weights[0] = _BACKGROUND_WEIGHT
        total = stages.pretrain_steps if stages.pretrain_steps is not None else 10**9
        step, t0, timed_from = 0, time.perf_counter(), 0.0
        self.vision.train()
        while step < total:
            if step == stages.warmup_steps:
                timed_from = time.perf_counter()
            cap = _difficulty_cap(step, total, stages.warmup_steps, stages.curriculum)
            scenes = self.scenes(stages.pretrain_images, cap)
            pixels = preprocess([s.image for s in scenes], self.config.vision.image_size)
            labels = torch.from_numpy(np.stack([patch_labels(s, grid).ravel() for s in scenes]))
            logits = head(_patch_tokens(self.vision, pixels))
            loss = F.cross_entropy(logits.flatten(0, 1), labels.ravel(), weight=weights)
            for group in optimiser.param_groups:
                group["lr"] = stages.pretrain_lr * _cosine(step, total, stages.warmup_steps)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            step += 1
            if step == 2 * stages.warmup_steps and stages.pretrain_steps is None:
                total = self.sized(step, timed_from, budget_end)
            if step % stages.progress_every == 0 or step == total:
                images = stages.progress_every * stages.pretrain_images
                self.report("pretrain", step, total, loss.item(), images, t0)
                t0 = time.perf_counter()
            self.steps["pretrain"] = step
            self.maybe_checkpoint()
        self.patch_accuracy = _patch_accuracy(self.vision, head, self.config)
        self.progress(f"pretrain done: per-patch {self.patch_accuracy}")

    # Stage 2 -------------------------------------------------------------------------------

    def match_token_scale(self) -> None:
        """Scale llama_proj so image tokens have the mean norm of the text embeddings.

        Unmatched, image tokens dwarf the prompt (norm ~77 against ~0.6 in the first trial) and the
        decoder's RMSNorm-ed residual stream is dominated by them from the first layer.
        """
        scenes = self.scenes(4, 1.0)
        pixels = preprocess([s.image for s in scenes], self.config.vision.image_size)
        with torch.no_grad():
            image_norm = self.vision(pixels).norm(dim=-1).mean()
            text_norm = self.llm.get_input_embeddings().weight.norm(dim=-1).mean()
            factor = (text_norm / image_norm).item()
            self.vision.llama_proj.weight.mul_(factor)
            self.vision.llama_proj.bias.mul_(factor)
        self.progress(f"image tokens scaled by {factor:.3f} to norm {text_norm.item():.3f}")

    def _questions(self, scene: Scene) -> list[Sample]:
        """Up to ``questions_per_image`` distinct samples, kinds drawn by ``kind_weights``."""
        samples = make_samples(scene)
        counts: dict[str, int] = {}
        for s in samples:
            counts[s.kind] = counts.get(s.kind, 0) + 1
        weights = np.array(
            [self.stages.kind_weights.get(s.kind, 0.0) / counts[s.kind] for s in samples]
        )
        available = int((weights > 0).sum())
        if available == 0:
            return []
        picked = self.question_rng.choice(
            len(samples),
            size=min(self.stages.questions_per_image, available),
            replace=False,
            p=weights / weights.sum(),
        )
        return [samples[i] for i in sorted(picked)]

    def _answer_ids(self, answer: str) -> list[int]:
        ids = self.tokenizer(answer, add_special_tokens=False, split_special_tokens=True).input_ids
        return [*ids, self.decoder.eos_id]

    def instruct_loss(self, scenes: list[Scene]) -> tuple[torch.Tensor, int]:
        """Mean answer-token loss per sequence, averaged over sequences."""
        pixels = preprocess([s.image for s in scenes], self.config.vision.image_size)
        embeds = self.vision(pixels)
        embed = self.llm.get_input_embeddings()
        rows: list[tuple[torch.Tensor, list[int], int]] = []
        for scene, image in zip(scenes, embeds, strict=True):
            questions = self._questions(scene)
            prompts = self.decoder._rows(image, [q.instruction for q in questions])
            for (ids, prompt), question in zip(prompts, questions, strict=True):
                answer = self._answer_ids(question.answer)
                row = torch.cat([prompt, embed(torch.tensor(answer))])
                rows.append((row, answer, len(ids)))
        length = max(r.shape[0] for r, _, _ in rows)
        hidden = rows[0][0].shape[1]
        inputs = rows[0][0].new_zeros((len(rows), length, hidden))
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        targets = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, (row, answer, prompt_len) in enumerate(rows):
            inputs[i, : row.shape[0]] = row
            mask[i, : row.shape[0]] = 1
            # Position p predicts token p + 1: the last prompt position predicts the first answer.
            targets[i, prompt_len - 1 : prompt_len - 1 + len(answer)] = torch.tensor(answer)
        logits = self.llm(inputs_embeds=inputs, attention_mask=mask).logits
        per_token = F.cross_entropy(
            logits.flatten(0, 1), targets.ravel(), ignore_index=-100, reduction="none"
        ).view(len(rows), length)
        counted = (targets != -100).sum(dim=1)
        return (per_token.sum(dim=1) / counted).mean(), len(rows)

    def instruct(self, budget_end: float) -> None:
        stages = self.stages
        layers = self.vision.vision_model.encoder.layers
        tuned = len(layers) if stages.tune_vision_layers < 0 else stages.tune_vision_layers
        self.vision.vision_model.requires_grad_(False)
        for layer in list(layers)[len(layers) - tuned :]:
            layer.requires_grad_(True)
        self.vision.vision_model.post_layernorm.requires_grad_(True)
        vision_params = [p for p in self.vision.vision_model.parameters() if p.requires_grad]
        groups = [
            {
                "params": [*self.llm.parameters(), *self.vision.llama_proj.parameters()],
                "lr": stages.lr,
            },
            {"params": vision_params, "lr": stages.vision_lr},
        ]
        optimiser = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)
        bases = [g["lr"] for g in optimiser.param_groups]
        params = [p for g in optimiser.param_groups for p in g["params"]]
        total = stages.instruct_steps if stages.instruct_steps is not None else 10**9
        step, t0, timed_from, items = 0, time.perf_counter(), 0.0, 0
        self.vision.train()
        self.llm.train()
        while step < total:
            if step == stages.warmup_steps:
                timed_from = time.perf_counter()
            cap = _difficulty_cap(step, total, stages.warmup_steps, stages.curriculum)
            loss, n = self.instruct_loss(self.scenes(stages.images_per_step, cap))
            items += n
            factor = _cosine(step, total, stages.warmup_steps)
            for group, base in zip(optimiser.param_groups, bases, strict=True):
                group["lr"] = base * factor
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            step += 1
            if step == 2 * stages.warmup_steps and stages.instruct_steps is None:
                total = self.sized(step, timed_from, budget_end)
            if step % stages.progress_every == 0 or step == total:
                self.report("instruct", step, total, loss.item(), items, t0)
                t0, items = time.perf_counter(), 0
            self.steps["instruct"] = step
            self.maybe_checkpoint()
        self.vision.eval()
        self.llm.eval()


def _patch_accuracy(stage: VisionStage, head: nn.Linear, config: ModelConfig) -> dict[str, float]:
    """Stage 1's figures on held-out scenes: overall, object-patch recall, per-class mean."""
    scenes = list(held_out_scenes(16, _MEASURE_SEED, size=config.vision.image_size))
    grid = config.vision.grid_size
    with torch.no_grad():
        pixels = preprocess([s.image for s in scenes], config.vision.image_size)
        predicted = head(_patch_tokens(stage, pixels)).argmax(dim=-1).numpy().ravel()
    truth = np.concatenate([patch_labels(s, grid).ravel() for s in scenes])
    recalls = [float((predicted[truth == c] == c).mean()) for c in np.unique(truth)]
    objects = (truth > 0) & (truth < _WATER)
    return {
        "accuracy": round(float((predicted == truth).mean()), 4),
        "background_share": round(float((truth == 0).mean()), 4),
        "object_recall": round(float((predicted[objects] == truth[objects]).mean()), 4),
        "mean_class_recall": round(float(np.mean(recalls)), 4),
    }


def train(
    out_dir: Path,
    *,
    seed: int,
    minutes: float,
    config: ModelConfig | None = None,
    stages: Stages | None = None,
    progress: Callable[[str], None] = print,
    threads: int = 2,
) -> TrainReport:
    """Train from scratch into ``out_dir`` (replaced atomically), evaluate, and log beside it.

    ``minutes`` bounds the training stages (saving and the closing evaluation come after it) and
    is ignored by a stage whose step count ``stages`` fixes.
    """
    # Data generation runs in this thread between steps, so torch gets all the cores meanwhile.
    torch.set_num_threads(threads)
    config = config or ModelConfig.skyeye_tiny()
    stages = stages or Stages()
    run = _Run(Path(out_dir), seed, minutes, config, stages, progress)
    if stages.pretrain_share > 0 and stages.pretrain_steps != 0:
        run.pretrain(run.started + stages.pretrain_share * minutes * 60)
    if stages.match_token_scale:
        run.match_token_scale()
    run.instruct(run.deadline)
    run.save()
    if stages.eval_scenes:
        from skyeye.evaluation import evaluate

        report = evaluate(run.out_dir, stages.eval_scenes, _MEASURE_SEED, 16)
        run.evaluation = {name: family.model_dump() for name, family in report.families.items()}
        progress(report.table())
        (run.out_dir / LOG_FILE).write_text(json.dumps(run.log(), indent=1) + "\n")
    return TrainReport(
        out_dir=run.out_dir,
        seed=seed,
        pretrain_steps=run.steps["pretrain"],
        instruct_steps=run.steps["instruct"],
        seconds=run.elapsed(),
        patch_accuracy=run.patch_accuracy,
        evaluation=run.evaluation,
        losses=run.losses,
    )
