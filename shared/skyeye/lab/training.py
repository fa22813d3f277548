"""Train skyeye-tiny on the procedural aerial world, reproducibly from a seed (CPU or GPU).

Two stages (their knobs are :class:`Stages`):

1. ``pretrain``: the vision tower alone learns dense targets through throwaway linear heads on its
   ``ln_vision`` patch tokens: a per-patch class (background, each object class, water) and the
   number features (:func:`number_features`) of the patch's centre and of its object's box (zero
   on background patches), and optionally its object's colour (:func:`dense_targets`). From
   scratch, a tower trained only through the decoder's answer loss barely learns to look.
2. ``instruct``: ``ln_vision`` (and top tower layers if asked), ``llama_proj`` and the Llama
   decoder learn the answers of :func:`skyeye.lab.world.make_samples`, loss on answer tokens only,
   with a difficulty curriculum; the number tokens ``<0>``..``<100>`` start from those same
   features and box numbers are scored against a Gaussian over neighbouring values.

Prompts are assembled by :class:`TextDecoder` itself (its ``_rows``), so training sees exactly the
sequence inference builds; the answer tokens and EOS follow ``[/INST]``.

Reproducibility: every random draw comes from ``seed`` (torch's generator, and numpy generators
for scene seeds, difficulties and question choice). A time budget only decides the step counts,
from the pace of each stage's first steps, whose schedule (warm-up, then a plateau) does not depend
on them; the counts are logged, and passing them back (``pretrain_steps``, ``instruct_steps``)
repeats the run exactly on the same device and torch thread count. On a GPU the model's step is
short beside assembling the step's scenes (rendering about 12 ms each, preprocessing 5, stage 1's
targets 4): ``workers`` assembles them in that many processes, the same scenes in the same order.

The stages can run on different machines: a stage-1-only run (``instruct_steps=0``) on a GPU,
where a wider tower trains fast, then stage 2 on the CPU from its folder (``tower``). A trained
model can also be trained further (``init``).
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.cache_utils import CacheLayerMixin
from transformers.models.llama.modeling_llama import LlamaAttention, rotate_half

from skyeye.lab.world import (
    OBJECT_CLASSES,
    OBJECT_COLOURS,
    TRAINING_SEED_LIMIT,
    Sample,
    Scene,
    held_out_scenes,
    make_samples,
    render_scene,
)
from skyeye.model.answers import Box, parse_boxes
from skyeye.model.architecture import VisionStage, llama_config
from skyeye.model.checkpoint import load_llm, load_vision, read_manifest, save_model
from skyeye.model.config import ModelConfig
from skyeye.model.decoder import IMAGE_TOKEN, TextDecoder, _common_prefix_length
from skyeye.model.vision import preprocess
from skyeye.model.vocabulary import NUMBER_TOKENS, tiny_tokenizer

__all__ = [
    "LOG_FILE",
    "DenseTargets",
    "Stages",
    "TrainReport",
    "box_tokens",
    "dense_targets",
    "number_features",
    "patch_labels",
    "train",
]

LOG_FILE = "training.json"

# Per-patch classes of the pretraining head: background, the object classes, open water.
_WATER = 1 + len(OBJECT_CLASSES)
_PATCH_CLASSES = _WATER + 1
# An object claims a patch when it covers this share of it: small cars still get their patch.
_OBJECT_SHARE = 0.1
# Background is most patches; down-weighting it keeps the head from settling on "background".
_BACKGROUND_WEIGHT = 0.2
# Tokenized answers kept per run; a few thousand cover most repeats.
_CACHED_ANSWERS = 8192
# Periods (on the 0-100 box scale) of the sinusoidal features of a number: the longest spans
# the scale without aliasing, the shortest makes neighbouring values distinguishable.
_PERIODS = (200.0, 100.0, 50.0, 25.0, 12.5, 6.25)
NUMBER_FEATURES = 2 * len(_PERIODS)
# Dense coordinate targets per patch: its own centre (x, y), its object's box (x1, y1, x2, y2).
_DENSE_VALUES = 6
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
    # Stage 1 also regresses, from each patch token, the sinusoidal features of its own centre and
    # (object patches) of its object's box, so that image tokens carry coordinates the decoder
    # can copy instead of inferring them from sequence positions.
    dense_boxes: bool = True
    dense_weight: float = 1.0
    # Background patches also regress zero box features. A merged image token is four patches,
    # mostly background around a small object: with zero there, what the token (or an attention
    # spread over the object's neighbours) holds decodes to the object's box, not a blend.
    zero_background_boxes: bool = True
    # Weight of a stage-1 loss regressing each patch's object colour (one-hot; zero on background
    # patches, as the boxes), so that a merged token holds its object's colour, not a blend with
    # the background beside it that the decoder cannot read "the red ship" from (0: off).
    colour_weight: float = 0.0
    instruct_steps: int | None = None
    images_per_step: int = 4
    questions_per_image: int = 8
    lr: float = 1e-3
    # The embeddings (input and output) of <0>..<100> start from the sinusoidal features of
    # their value, the same features stage 1 teaches the tower.
    number_embeddings: bool = True
    # Gaussian soft targets (this many steps of the 0-100 scale) on box-number answer tokens, so
    # a near miss costs less than a far one: the cross-entropy over 101 bins acts as a regression.
    number_sigma: float = 1.5
    # Weight of an auxiliary loss pulling one head's attention (the last layer's first), at the
    # positions that predict a [refer] box's numbers, onto the referred object's image tokens:
    # without it the decoder cannot pick the referred object's first coordinate (0 turns it off).
    attention_supervision: float = 0.3
    vision_lr: float = 3e-4
    # Top ViT layers trained in stage 2 (plus ln_vision); the rest stay as stage 1 left them, which
    # also spares their backward pass. Negative: all layers. The default is none: tuning the top
    # layer of a stage-1 tower that reads boxes to within 0.6 blurred them again (grounding 0.072
    # against 0.134, docs/training-log.md round 7).
    tune_vision_layers: int = 0
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
    """What :func:`train` hands back: the folder, the step counts it ran, figures, loss curve."""

    out_dir: Path
    seed: int
    pretrain_steps: int
    instruct_steps: int
    seconds: float
    patch_accuracy: dict[str, float]  # after stage 1 (empty when skipped)
    evaluation: dict[str, Any]  # family -> figures, after stage 2 (empty when not run)
    losses: list[tuple[str, int, float]]  # (stage, step, loss), every progress_every steps


def patch_labels(scene: Scene, grid: int) -> np.ndarray:
    """Stage 1's class of each patch, as a (grid, grid) int64 array.

    The class is that of the object covering most of the patch, if it covers at least
    ``_OBJECT_SHARE`` of it, else water if water is most of it, else background.
    """
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


def number_features(values: torch.Tensor) -> torch.Tensor:
    """(..., NUMBER_FEATURES) cos/sin of ``values`` (0-100 scale) at each of ``_PERIODS``."""
    omega = 2 * math.pi / torch.tensor(_PERIODS, device=values.device)
    angles = values.float().unsqueeze(-1) * omega
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def _box_values(box: Box) -> tuple[int, int, int, int]:
    """The box as (x1, y1, x2, y2) on the 0-100 scale."""
    return box.x1, box.y1, box.x2, box.y2


def _owners(scene: Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per patch (row-major): which object covers most of it, and whether it covers enough.

    The first array is the index in ``scene.objects`` of the object covering most of the patch,
    the second whether that object covers at least ``_OBJECT_SHARE`` of it (else the index means
    nothing).
    """
    width, height = scene.size
    cell_h, cell_w = height // grid, width // grid
    instances = scene.instances[: grid * cell_h, : grid * cell_w].astype(np.int64)
    rows = np.arange(grid * cell_h) // cell_h
    cols = np.arange(grid * cell_w) // cell_w
    patch = rows[:, None] * grid + cols[None, :]
    n = len(scene.objects) + 1
    if n == 1:
        return np.zeros(grid * grid, dtype=np.int64), np.zeros(grid * grid, dtype=bool)
    pixels = np.bincount((patch * n + instances).ravel(), minlength=grid * grid * n)
    shares = pixels.reshape(grid * grid, n)[:, 1:] / (cell_h * cell_w)
    return shares.argmax(axis=1), shares.max(axis=1) >= _OBJECT_SHARE


class DenseTargets(NamedTuple):
    """Stage 1's per-patch targets (grid * grid rows, row-major)."""

    values: np.ndarray  # (.., 6) on the 0-100 scale: patch centre (x, y), object box (x1..y2)
    has_object: np.ndarray  # bool: an object covers ``_OBJECT_SHARE`` of the patch
    colours: np.ndarray  # int64: 1 + the object's index in ``OBJECT_COLOURS``, 0 without one


def dense_targets(scene: Scene, grid: int) -> DenseTargets:
    """Stage 1's dense targets: each patch's centre, and its object's box and colour.

    The object is the one covering most of the patch; box and colour are zero where no object
    covers ``_OBJECT_SHARE`` of it.
    """
    width, height = scene.size
    owner, has_object = _owners(scene, grid)
    boxes = np.array(
        [_box_values(o.model_box(width, height)) for o in scene.objects] or [(0, 0, 0, 0)],
        dtype=np.float32,
    )
    centre = (np.arange(grid, dtype=np.float32) + 0.5) * 100 / grid
    values = np.zeros((grid * grid, _DENSE_VALUES), dtype=np.float32)
    values[:, 0] = np.tile(centre, grid)
    values[:, 1] = np.repeat(centre, grid)
    values[:, 2:] = np.where(has_object[:, None], boxes[owner], 0.0)
    colours = np.array([1 + OBJECT_COLOURS.index(o.colour) for o in scene.objects] or [0])
    return DenseTargets(values, has_object, np.where(has_object, colours[owner], 0))


def _cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up, a plateau until ``2 * warmup``, then cosine down to 10%.

    Warm-up and plateau are both independent of ``total``, which a time budget only fixes then.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - 2 * warmup) / max(1, total - 2 * warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def _lineage(log: dict[str, Any]) -> dict[str, Any]:
    """An earlier run's log, and those it started from, without their loss curves.

    Each ``--init`` generation would otherwise carry every curve before it (about 20 KB a
    generation) into a file packaged with the weights; each curve stays in its own run's
    ``training.json``.
    """
    kept = {k: v for k, v in log.items() if k != "losses"}
    for key in ("tower", "init"):
        if kept.get(key):
            kept[key] = {**kept[key], "log": _lineage(kept[key].get("log", {}))}
    return kept


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


_Item = TypeVar("_Item")


def _scene_item(seed: int, size: int, difficulty: float) -> tuple[Scene, np.ndarray]:
    """A training scene and its preprocessed (3, size, size) pixels."""
    scene = render_scene(seed, size, difficulty)
    return scene, preprocess([scene.image], size)[0].numpy()


def _dense_item(
    seed: int, size: int, difficulty: float, *, grid: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stage 1's inputs for one scene: pixels, patch labels, dense values, has_object, colours.

    Not the Scene itself: its maps would cross the process boundary for nothing.
    """
    scene, pixels = _scene_item(seed, size, difficulty)
    labels = patch_labels(scene, grid).ravel()
    return pixels, labels, *dense_targets(scene, grid)


def _assembly_pool(workers: int) -> Pool | None:
    """The ``workers`` processes that assemble scenes, or None for none.

    Spawned, not forked: the workers preprocess pixels with torch, whose thread pool (and CUDA
    context) a forked child inherits in a state it can hang on. One thread each, as there is one
    worker per core.
    """
    if workers <= 0:
        return None
    return multiprocessing.get_context("spawn").Pool(workers, torch.set_num_threads, (1,))


def _untrained_model(
    config: ModelConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[VisionStage, LlamaForCausalLM]:
    """A fresh vision stage and decoder on the CPU, their weights drawn from torch's generator.

    Built on the CPU first, so the initial weights are the same on every device.
    """
    vision = VisionStage(config)
    llm = LlamaForCausalLM(
        llama_config(
            config,
            bos_id=tokenizer.bos_token_id,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
        )
    )
    return vision, llm


class _Sequence(NamedTuple):
    """One question as stage 2 trains on it, before its shared prompt prefix is split off."""

    ids: list[int]  # the prompt's token ids
    prompt: torch.Tensor  # the prompt's embeddings, image rows included
    answer: tuple[int, ...]  # the answer's token ids, EOS last
    image: int  # index of the question's image in the batch


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
        device: str = "cpu",
        workers: int = 0,
    ) -> None:
        self.out_dir, self.seed, self.config, self.stages = out_dir, seed, config, stages
        self.device = torch.device(device)
        self.pool = _assembly_pool(workers)
        self.progress = progress
        self.started = time.perf_counter()
        self.deadline = self.started + minutes * 60
        self.last_checkpoint = self.started
        torch.manual_seed(seed)
        self.tokenizer = tiny_tokenizer()
        self.vision, self.llm = _untrained_model(config, self.tokenizer)
        self.vision.to(self.device)
        # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to), so the stubs
        # see the unbound signature and take ``device`` for ``self``
        self.llm.to(self.device)  # type: ignore[arg-type]
        self.last_attention = _AttentionInputs(self.llm.model.layers[-1].self_attn)
        self.decoder = TextDecoder(config, self.llm, self.tokenizer)
        # Answers repeat less than instructions (boxes vary) but often enough: yes/no, counts,
        # captions and classes.
        self._answer_ids = functools.lru_cache(maxsize=_CACHED_ANSWERS)(self._tokenize_answer)
        # convert_tokens_to_ids has no overload: a list of tokens gives a list of ids
        number_ids: list[int] = self.tokenizer.convert_tokens_to_ids(list(NUMBER_TOKENS))  # type: ignore[assignment]
        # Looked up per answer token on the host: indexing a GPU tensor would sync each time.
        self.number_id_set = frozenset(number_ids)
        self.number_ids = torch.tensor(number_ids, device=self.device)
        # Vocabulary id -> its number (0-100), -1 for every other token.
        self.number_of = torch.full(
            (config.llm.vocab_size,), -1, dtype=torch.long, device=self.device
        )
        self.number_of[self.number_ids] = torch.arange(101, device=self.device)
        # One generator per purpose, so that changing one stage's draws leaves the other's alone.
        self.scene_rng = np.random.default_rng([seed, 1])
        self.question_rng = np.random.default_rng([seed, 2])
        self.losses: list[tuple[str, int, float]] = []
        self.steps = {"pretrain": 0, "instruct": 0}
        self.patch_accuracy: dict[str, float] = {}
        self.evaluation: dict[str, Any] = {}
        self.tower: dict[str, Any] = {}
        self.init: dict[str, Any] = {}

    def close(self) -> None:
        self.last_attention.remove()
        if self.pool is not None:
            self.pool.terminate()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _assembled(self, item: Callable[..., _Item], n: int, cap: float) -> list[_Item]:
        """``item(seed, size, difficulty)`` for the next ``n`` scenes.

        It runs in the worker processes when there are any: the same scenes, in the same order,
        as without them.
        """
        seeds = self.scene_rng.integers(0, TRAINING_SEED_LIMIT, size=n)
        difficulties = self.scene_rng.uniform(0.0, cap, size=n)
        size = self.config.vision.image_size
        jobs = [(int(s), size, float(d)) for s, d in zip(seeds, difficulties, strict=True)]
        if self.pool is not None:
            return self.pool.starmap(item, jobs)
        return [item(*job) for job in jobs]

    def scenes(self, n: int, cap: float) -> tuple[list[Scene], torch.Tensor]:
        """The next ``n`` scenes and their preprocessed pixels, on the training device."""
        items = self._assembled(_scene_item, n, cap)
        pixels = torch.from_numpy(np.stack([p for _, p in items])).to(self.device)
        return [s for s, _ in items], pixels

    def sized(self, step: int, timed_from: float, budget_end: float) -> int:
        """The steps that fit before ``budget_end`` at the pace since step ``warmup_steps``."""
        now = time.perf_counter()
        pace = (now - timed_from) / max(1, step - self.stages.warmup_steps)
        return step + max(0, int((budget_end - now) / pace))

    def report(
        self, stage: str, step: int, total: int | None, loss: float, items: int, t0: float
    ) -> None:
        """A progress line; ``total`` is None while a time budget has yet to size the steps."""
        self.losses.append((stage, step, loss))
        rate = items / max(1e-9, time.perf_counter() - t0)
        of = f"/{total}" if total is not None else " (sizing the steps)"
        self.progress(
            f"{stage} step {step}{of} loss {loss:.4f} {rate:.1f} samples/s "
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
            "tower": self.tower,
            "init": self.init,
            "seconds": round(self.elapsed(), 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            "python": platform.python_version(),
        }

    def save(self) -> None:
        """Replace ``out_dir`` by a complete folder: a killed run keeps the last good weights."""
        parent = self.out_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=parent))
        try:
            origin = {"builder": "skyeye.lab.training", "seed": self.seed, "steps": self.steps}
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

    def _optimise(
        self,
        stage: str,
        optimiser: torch.optim.Optimizer,
        fixed_steps: int | None,
        budget_end: float,
        loss_of: Callable[[float], tuple[torch.Tensor, int]],
    ) -> None:
        """The loop both stages share: curriculum cap, LR schedule, clipped step, step count.

        The step count is sized from the pace unless fixed; the loop also reports progress and
        saves checkpoints. ``loss_of(cap)`` draws a batch no harder than ``cap`` and returns its
        loss and how many samples it held.
        """
        stages = self.stages
        bases = [g["lr"] for g in optimiser.param_groups]
        params = [p for g in optimiser.param_groups for p in g["params"]]
        total = fixed_steps if fixed_steps is not None else 10**9
        step, t0, timed_from, items = 0, time.perf_counter(), 0.0, 0
        while step < total:
            if step == stages.warmup_steps:
                timed_from = time.perf_counter()
            loss, n = loss_of(_difficulty_cap(step, total, stages.warmup_steps, stages.curriculum))
            items += n
            factor = _cosine(step, total, stages.warmup_steps)
            for group, base in zip(optimiser.param_groups, bases, strict=True):
                group["lr"] = base * factor
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            step += 1
            if step == 2 * stages.warmup_steps and fixed_steps is None:
                total = self.sized(step, timed_from, budget_end)
            if step % stages.progress_every == 0 or step == total:
                sized = fixed_steps is not None or step >= 2 * stages.warmup_steps
                self.report(stage, step, total if sized else None, loss.item(), items, t0)
                t0, items = time.perf_counter(), 0
            self.steps[stage] = step
            self.maybe_checkpoint()

    def run_stages(self, minutes: float, tower: Path | None, init: Path | None) -> None:
        """Load ``tower`` or ``init`` if given, run stage 1 unless that replaces it, then stage 2.

        A loaded folder replaces stage 1 unless ``pretrain_steps`` is set. Without ``init``, the
        image tokens are scaled and the number embeddings structured first, as ``stages`` asks.
        """
        stages = self.stages
        if init is not None:
            self.load_model(Path(init))
        elif tower is not None:
            self.load_tower(Path(tower))
        loaded = init is not None or tower is not None
        fixed = stages.pretrain_steps is not None
        if stages.pretrain_share > 0 and stages.pretrain_steps != 0 and (fixed or not loaded):
            self.pretrain(self.started + stages.pretrain_share * minutes * 60)
        if init is None:
            if stages.match_token_scale:
                self.match_token_scale()
            if stages.number_embeddings:
                self.structure_numbers()
        self.instruct(self.deadline)

    def closing_evaluation(self) -> None:
        """Evaluate the saved folder on ``eval_scenes`` held-out scenes and add that to its log."""
        from skyeye.lab.evaluation import evaluate

        report = evaluate(self.out_dir, self.stages.eval_scenes, _MEASURE_SEED, 16)
        self.evaluation = {name: family.model_dump() for name, family in report.families.items()}
        self.progress(report.table())
        (self.out_dir / LOG_FILE).write_text(json.dumps(self.log(), indent=1) + "\n")

    # Stage 1 -------------------------------------------------------------------------------

    def _earlier(self, folder: Path) -> dict[str, Any]:
        """Where an earlier run's folder came from, for this run's log."""
        log = folder / LOG_FILE
        earlier = json.loads(log.read_text()) if log.is_file() else {}
        return {
            "folder": str(folder),
            "origin": read_manifest(folder).origin,
            "log": _lineage(earlier),
        }

    def load_tower(self, folder: Path) -> None:
        """Start from the vision tower of an earlier run's folder instead of running stage 1.

        Say stage 1 alone on a GPU, where the tower is cheap to train, and stage 2 here on the CPU.
        """
        manifest = read_manifest(folder)
        if manifest.config.vision != self.config.vision:
            raise ValueError(
                f"{folder}: its vision tower is {manifest.config.vision}, "
                f"this run's is {self.config.vision}"
            )
        _, stage = load_vision(folder, "cpu", torch.float32)
        self.vision.vision_model.load_state_dict(stage.vision_model.state_dict())
        self.tower = self._earlier(folder)
        self.patch_accuracy = self.tower["log"].get("patch_accuracy", {})
        self.progress(f"vision tower from {folder} ({manifest.origin}): {self.patch_accuracy}")

    def load_model(self, folder: Path) -> None:
        """Start from every weight (tower, projector, decoder) of an earlier run's folder.

        Stage 2 then trains them further with a fresh optimiser and schedule.
        """
        manifest = read_manifest(folder)
        if manifest.config != self.config:
            raise ValueError(
                f"{folder}: its model is {manifest.config}, this run's is {self.config}"
            )
        _, stage = load_vision(folder, "cpu", torch.float32)
        self.vision.load_state_dict(stage.state_dict())
        _, llm, _ = load_llm(folder, "cpu", torch.float32)
        self.llm.load_state_dict(llm.state_dict())
        self.init = self._earlier(folder)
        self.patch_accuracy = self.init["log"].get("patch_accuracy", {})
        self.progress(f"every weight from {folder} ({manifest.origin})")

    def pretrain(self, budget_end: float) -> None:
        stages, grid = self.stages, self.config.vision.grid_size
        head = nn.Linear(self.config.vision.hidden_size, _PATCH_CLASSES).to(self.device)
        regressor = nn.Linear(self.config.vision.hidden_size, _DENSE_VALUES * NUMBER_FEATURES)
        regressor.to(self.device)
        # Built only when used: its initial draws would shift those of everything after it.
        colour_head = (
            nn.Linear(self.config.vision.hidden_size, len(OBJECT_COLOURS)).to(self.device)
            if stages.colour_weight > 0
            else None
        )
        params = [*self.vision.vision_model.parameters(), *head.parameters()]
        if stages.dense_boxes:
            params += regressor.parameters()
        if colour_head is not None:
            params += colour_head.parameters()
        optimiser = torch.optim.AdamW(params, lr=stages.pretrain_lr, weight_decay=0.01)
        weights = torch.ones(_PATCH_CLASSES, device=self.device)
        weights[0] = _BACKGROUND_WEIGHT
        self.vision.train()
        dense_item = functools.partial(_dense_item, grid=grid)

        def loss_of(cap: float) -> tuple[torch.Tensor, int]:
            items = self._assembled(dense_item, stages.pretrain_images, cap)
            pixels, labels, values, has_object, colours = (
                torch.from_numpy(np.stack(parts)).to(self.device)
                for parts in zip(*items, strict=True)
            )
            tokens = _patch_tokens(self.vision, pixels)
            loss = F.cross_entropy(head(tokens).flatten(0, 1), labels.ravel(), weight=weights)
            if stages.dense_boxes:
                dense = _dense_loss(
                    regressor, tokens, values, has_object, stages.zero_background_boxes
                )
                loss = loss + stages.dense_weight * dense
            if colour_head is not None:
                loss = loss + stages.colour_weight * _colour_loss(colour_head, tokens, colours)
            return loss, len(items)

        self._optimise("pretrain", optimiser, stages.pretrain_steps, budget_end, loss_of)
        self.patch_accuracy = _patch_accuracy(
            self.vision,
            head,
            regressor if stages.dense_boxes else None,
            colour_head,
            self.config,
        )
        self.progress(f"pretrain done: per-patch {self.patch_accuracy}")

    # Stage 2 -------------------------------------------------------------------------------

    def match_token_scale(self) -> None:
        """Scale llama_proj so image tokens have the mean norm of the text embeddings.

        Unmatched, image tokens dwarf the prompt (norm ~77 against ~0.6 in the first trial) and the
        decoder's RMSNorm-ed residual stream is dominated by them from the first layer.
        """
        _, pixels = self.scenes(4, 1.0)
        with torch.no_grad():
            image_norm = self.vision(pixels).norm(dim=-1).mean()
            text_norm = self.llm.get_input_embeddings().get_parameter("weight").norm(dim=-1).mean()
            factor = (text_norm / image_norm).item()
            self.vision.llama_proj.weight.mul_(factor)
            self.vision.llama_proj.bias.mul_(factor)
        self.progress(f"image tokens scaled by {factor:.3f} to norm {text_norm.item():.3f}")

    def structure_numbers(self) -> None:
        """Write the number features of <0>..<100> into their first embedding dimensions.

        Both tables, input and output, at the rows' mean norm; the other dimensions keep their
        random identity.
        """
        features = number_features(torch.arange(101, device=self.device))
        with torch.no_grad():
            for table in (self.llm.get_input_embeddings(), self.llm.get_output_embeddings()):
                weight = table.get_parameter("weight")
                norm = weight.norm(dim=-1).mean()
                scaled = features * norm / features.norm(dim=-1, keepdim=True)
                weight[self.number_ids, :NUMBER_FEATURES] = scaled

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

    def _tokenize_answer(self, answer: str) -> tuple[int, ...]:
        ids = self.tokenizer(answer, add_special_tokens=False, split_special_tokens=True).input_ids
        return (*ids, self.decoder.eos_id)

    def instruct_loss(self, scenes: list[Scene], pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean answer-token loss per sequence, averaged over sequences.

        As at inference (``TextDecoder``'s shared prefix), the prompt part every question of an
        image shares (BOS, the template and the 256 image rows) runs through the decoder once per
        image, and each question's own suffix (its words, then the answer) against a copy of that
        key/value cache. Causal attention makes this the same loss as whole sequences, at a
        quarter of the decoder's work: most of a sequence is its image.
        """
        rows, refer = self._sequences(scenes, pixels)
        shared = _common_prefix_length([row.ids for row in rows])
        cache = self._prefix_cache(rows, shared)
        inputs, mask, targets = self._suffixes(rows, shared)
        positions = torch.arange(shared, shared + inputs.shape[1], device=self.device)
        out = self.llm(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=positions.expand(len(rows), -1),
            cache=cache,
            use_cache=True,
        )
        per_token = self._token_losses(out.logits, targets)
        counted = (targets != -100).sum(dim=1)
        loss = (per_token.sum(dim=1) / counted).mean()
        if refer:
            aux = self._attention_loss(rows, refer, shared, cache)
            loss = loss + self.stages.attention_supervision * aux
        return loss, len(rows)

    def _sequences(
        self, scenes: list[Scene], pixels: torch.Tensor
    ) -> tuple[list[_Sequence], list[tuple[int, Sample]]]:
        """Each image's drawn questions as decoder sequences, and the refer ones to supervise.

        The second list pairs a sequence's index with its [refer] sample, for the questions whose
        attention is supervised (none when ``attention_supervision`` is 0).
        """
        embeds = self.vision(pixels)
        rows: list[_Sequence] = []
        refer: list[tuple[int, Sample]] = []
        for image_index, (scene, image) in enumerate(zip(scenes, embeds, strict=True)):
            questions = self._questions(scene)
            prompts = self.decoder._rows(image, [q.instruction for q in questions])
            for (ids, prompt), question in zip(prompts, questions, strict=True):
                if question.kind == "refer" and self.stages.attention_supervision > 0:
                    refer.append((len(rows), question))
                answer = self._answer_ids(question.answer)
                rows.append(_Sequence(ids, prompt, answer, image_index))
        return rows, refer

    def _prefix_cache(self, rows: list[_Sequence], shared: int) -> DynamicCache:
        """The decoder's key/value cache of the first ``shared`` positions, a row per sequence.

        The prefix runs once per image that has questions, taken from its first sequence; row r
        of the cache then becomes a copy of its image's prefix row.
        """
        firsts: dict[int, int] = {}
        for i, row in enumerate(rows):
            firsts.setdefault(row.image, i)
        prefix = torch.stack([rows[i].prompt[:shared] for i in firsts.values()])
        cache = DynamicCache(config=self.llm.config)
        self.llm.model(inputs_embeds=prefix, cache=cache, use_cache=True)
        order = list(firsts)
        owner = torch.tensor([order.index(row.image) for row in rows], device=self.device)
        cache.batch_select_indices(owner)
        return cache

    def _suffixes(
        self, rows: list[_Sequence], shared: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each sequence after the shared prefix, padded: its embeddings, attention mask, targets.

        The mask covers the prefix too; a target is the answer token a position predicts, -100
        where there is none.
        """
        embed = self.llm.get_input_embeddings()
        suffixes = [
            torch.cat([prompt[shared:], embed(torch.tensor(answer, device=self.device))])
            for _, prompt, answer, _ in rows
        ]
        length = max(s.shape[0] for s in suffixes)
        inputs = suffixes[0].new_zeros((len(rows), length, suffixes[0].shape[1]))
        mask = torch.zeros((len(rows), shared + length), dtype=torch.long)
        mask[:, :shared] = 1
        targets = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, (suffix, (ids, _, answer, _)) in enumerate(zip(suffixes, rows, strict=True)):
            inputs[i, : suffix.shape[0]] = suffix
            mask[i, shared : shared + suffix.shape[0]] = 1
            # Position p predicts token p + 1: the last prompt position predicts the first answer.
            first = len(ids) - 1 - shared
            targets[i, first : first + len(answer)] = torch.tensor(answer)
        return inputs, mask.to(self.device), targets.to(self.device)

    def _attention_loss(
        self,
        rows: list[_Sequence],
        refer: list[tuple[int, Sample]],
        shared: int,
        cache: DynamicCache,
    ) -> torch.Tensor:
        """Minus the log of the supervised head's attention on each referred object, averaged.

        The attention mass counted is that on the object's image tokens, at each of the suffix
        positions that predict the box's four numbers.
        """
        layer = cache.layers[-1]
        # The cache's layers are typed for every model family; a Llama layer holds its keys.
        if not isinstance(layer, CacheLayerMixin) or layer.keys is None:
            raise RuntimeError("the decoder's last layer has cached no keys")
        keys = layer.keys
        grid, merge = self.config.vision.grid_size, self.config.merge
        masses = []
        for r, question in refer:
            ids, _, answer, _ = rows[r]
            # The suffix positions that predict the box's four numbers.
            numbers = [
                len(ids) - 1 - shared + i for i, t in enumerate(answer) if t in self.number_id_set
            ][:4]
            box = parse_boxes(question.answer)[0]
            on = box_tokens(_box_values(box), 100, grid, merge) + ids.index(IMAGE_TOKEN)
            weights = self.last_attention.weights(r, numbers, keys[r, 0])
            masses.append(weights[:, on.to(self.device)].sum(dim=-1))
        return -torch.log(torch.cat(masses) + 1e-6).mean()

    def _token_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, L) cross-entropy per answer token; ignored positions (-100) cost 0.

        On box numbers it is taken against a Gaussian over the 101 number tokens when
        ``number_sigma`` > 0.
        """
        log_p = F.log_softmax(logits.float(), dim=-1)
        known = targets != -100
        safe = targets.where(known, 0)
        losses = -log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        sigma = self.stages.number_sigma
        values = self.number_of[safe].where(known, -1)
        if sigma > 0 and bool((values >= 0).any()):
            numbers = values >= 0
            offsets = torch.arange(101, device=logits.device) - values[numbers].unsqueeze(-1)
            offsets = offsets.float()
            soft = torch.softmax(-offsets.pow(2) / (2 * sigma**2), dim=-1)
            picked = log_p[numbers][:, self.number_ids]
            losses = losses.masked_scatter(numbers, -(soft * picked).sum(dim=-1))
        return losses * known

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
        self.vision.train()
        self.llm.train()

        def loss_of(cap: float) -> tuple[torch.Tensor, int]:
            return self.instruct_loss(*self.scenes(stages.images_per_step, cap))

        self._optimise("instruct", optimiser, stages.instruct_steps, budget_end, loss_of)
        self.vision.eval()
        self.llm.eval()


def box_tokens(
    box: tuple[float, float, float, float], extent: float, grid: int, merge: int
) -> torch.Tensor:
    """Indices (row-major) of the merged image tokens that overlap ``box``.

    A merged token is 1 x ``merge`` patches of a ``grid`` x ``grid`` patch grid. ``box`` is x1, y1,
    x2, y2 with x2, y2 exclusive, on a square scale of ``extent``: 100 for model boxes, the image
    size for pixels. A box less than one unit wide or high still overlaps the token it sits on.
    """
    x1, y1, x2, y2 = box
    rows = torch.arange(grid)
    cols = torch.arange(grid // merge)
    cell_y, cell_x = extent / grid, extent * merge / grid
    in_rows = (rows * cell_y < max(y2, y1 + 1)) & ((rows + 1) * cell_y > y1)
    in_cols = (cols * cell_x < max(x2, x1 + 1)) & ((cols + 1) * cell_x > x1)
    return (in_rows[:, None] & in_cols[None, :]).flatten().nonzero().flatten()


class _AttentionInputs:
    """Keeps what one attention layer was last called with, to recompute its first head's weights.

    They are recomputed at a few query positions only: the forward itself stays on SDPA, which
    returns none, and eager attention over every head and position would slow training by a
    quarter.
    """

    def __init__(self, attention: LlamaAttention) -> None:
        self.attention = attention
        self.hidden: torch.Tensor | None = None
        self.rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self.handle = attention.register_forward_pre_hook(self._keep, with_kwargs=True)

    def _keep(self, _module: nn.Module, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.hidden, self.rotary = kwargs["hidden_states"], kwargs["position_embeddings"]

    def remove(self) -> None:
        self.handle.remove()

    def weights(self, row: int, queries: list[int], keys: torch.Tensor) -> torch.Tensor:
        """The first head's causal attention weights at ``row`` of the last call.

        Shape (len(queries), len(keys)), as eager attention computes them. ``queries`` index that
        call's positions; ``keys`` (the row's first key head from the cache, rotated) may begin
        with a cached prefix before them.
        """
        if self.hidden is None or self.rotary is None:
            raise RuntimeError("the attention layer has not run yet")
        attention = self.attention
        size = attention.head_dim
        hidden = self.hidden[row]
        cos, sin = (t[min(row, t.shape[0] - 1)] for t in self.rotary)
        # The first head's rows of q_proj (its key head is the first too, grouped or not).
        proj = attention.q_proj
        q = F.linear(
            hidden[queries], proj.weight[:size], None if proj.bias is None else proj.bias[:size]
        )
        q = q * cos[queries] + rotate_half(q) * sin[queries]
        scores = (q @ keys.T) * attention.scaling
        offset = keys.shape[0] - hidden.shape[0]
        seen = torch.arange(keys.shape[0], device=hidden.device)
        future = seen[None, :] > offset + torch.tensor(queries, device=hidden.device)[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        return torch.softmax(scores.float(), dim=-1)


def _dense_loss(
    regressor: nn.Linear,
    tokens: torch.Tensor,
    values: torch.Tensor,
    has_object: torch.Tensor,
    zero_background: bool,
) -> torch.Tensor:
    """MSE of the number features of patch centres and, on object patches, of object boxes.

    ``values`` and ``has_object`` are as :func:`dense_targets`, batched; with ``zero_background``
    the loss also counts zero box features on the other patches.
    """
    predicted = regressor(tokens).unflatten(-1, (_DENSE_VALUES, NUMBER_FEATURES))
    features = number_features(values)
    features[..., 2:, :] *= has_object[..., None, None]
    errors = (predicted - features).pow(2).mean(dim=-1)
    centre = errors[..., :2].mean()
    boxes = errors[..., 2:].mean(dim=-1)
    loss = centre + (boxes * has_object).sum() / has_object.sum().clamp(min=1)
    if zero_background:
        loss = loss + (boxes * ~has_object).mean()
    return loss


def _colour_loss(head: nn.Linear, tokens: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Squared error of each patch's one-hot object colour, and towards zero on other patches.

    ``colours`` is as :func:`dense_targets`, batched. The error is averaged over object patches,
    plus the same towards zero on the other patches.
    """
    on = colours > 0
    target = F.one_hot((colours - 1).clamp(min=0), len(OBJECT_COLOURS)).float() * on[..., None]
    errors = (head(tokens) - target).pow(2).sum(dim=-1)
    return (errors * on).sum() / on.sum().clamp(min=1) + (errors * ~on).mean()


def _decoded(features: torch.Tensor) -> torch.Tensor:
    """The 0-100 value whose number features are nearest (dot product) to ``features``."""
    table = number_features(torch.arange(101, device=features.device))
    return (features @ table.T).argmax(dim=-1).float()


def _patch_accuracy(
    stage: VisionStage,
    head: nn.Linear,
    regressor: nn.Linear | None,
    colour_head: nn.Linear | None,
    config: ModelConfig,
) -> dict[str, float]:
    """Stage 1's figures on held-out scenes: overall, object-patch recall, per-class mean.

    With dense targets also the mean absolute error (0-100 scale) of the decoded centres and
    boxes; with colour targets the share of object patches whose strongest colour output is right.
    """
    scenes = list(held_out_scenes(16, _MEASURE_SEED, size=config.vision.image_size))
    grid = config.vision.grid_size
    device = head.weight.device
    with torch.no_grad():
        pixels = preprocess([s.image for s in scenes], config.vision.image_size).to(device)
        tokens = _patch_tokens(stage, pixels)
        predicted = head(tokens).argmax(dim=-1).cpu().numpy().ravel()
        features = None if regressor is None else regressor(tokens).cpu()
        colours = None if colour_head is None else colour_head(tokens).argmax(dim=-1).cpu()
    truth = np.concatenate([patch_labels(s, grid).ravel() for s in scenes])
    needed = features is not None or colours is not None
    targets = [dense_targets(s, grid) for s in scenes] if needed else []
    recalls = [float((predicted[truth == c] == c).mean()) for c in np.unique(truth)]
    objects = (truth > 0) & (truth < _WATER)
    figures = {
        "accuracy": round(float((predicted == truth).mean()), 4),
        "background_share": round(float((truth == 0).mean()), 4),
        "object_recall": round(float((predicted[objects] == truth[objects]).mean()), 4),
        "mean_class_recall": round(float(np.mean(recalls)), 4),
    }
    if features is not None:
        decoded = _decoded(features.unflatten(-1, (_DENSE_VALUES, NUMBER_FEATURES))).flatten(0, 1)
        values = torch.from_numpy(np.concatenate([t.values for t in targets]))
        has_object = torch.from_numpy(np.concatenate([t.has_object for t in targets]))
        errors = (decoded - values).abs()
        figures["centre_mae"] = round(errors[:, :2].mean().item(), 2)
        figures["box_mae"] = round(errors[has_object, 2:].mean().item(), 2)
    if colours is not None:
        known = torch.from_numpy(np.concatenate([t.colours for t in targets]))
        right = colours.ravel()[known > 0] == known[known > 0] - 1
        figures["colour_accuracy"] = round(right.float().mean().item(), 4)
    return figures


def train(
    out_dir: Path,
    *,
    seed: int,
    minutes: float,
    config: ModelConfig | None = None,
    stages: Stages | None = None,
    progress: Callable[[str], None] = print,
    threads: int = 2,
    device: str = "cpu",
    workers: int = 0,
    tower: Path | None = None,
    init: Path | None = None,
) -> TrainReport:
    """Train into ``out_dir`` (replaced atomically), evaluate, and log beside it.

    ``minutes`` bounds the training stages (saving and the closing evaluation come after it) and
    is ignored by a stage whose step count ``stages`` fixes. ``device`` is where the model trains
    (``cuda`` on a GPU); ``workers`` > 0 assembles scenes in that many processes.

    Training starts from scratch, or from an earlier run's folder (the log keeps where it came
    from): ``tower``, a folder with ``config``'s vision tower (say a run with
    ``instruct_steps=0``), or ``init``, a folder with ``config``'s whole model, which stage 2
    trains further (its projector and number embeddings are not rescaled again, and the
    difficulty curriculum is off). Either replaces stage 1 unless ``stages.pretrain_steps`` is
    set, which continues stage 1 from that tower.
    """
    if tower is not None and init is not None:
        raise ValueError("give tower or init, not both")
    # Data generation runs in this thread between steps, so torch gets all the cores meanwhile.
    torch.set_num_threads(threads)
    config = config or ModelConfig.skyeye_tiny()
    stages = stages or Stages()
    if init is not None:
        # The curriculum's easy close-ups ease a fresh decoder in; a trained one goes on with
        # the whole range.
        stages = replace(stages, curriculum=False)
    run = _Run(Path(out_dir), seed, minutes, config, stages, progress, device, workers)
    try:
        run.run_stages(minutes, tower, init)
    finally:
        run.close()
    run.save()
    if stages.eval_scenes:
        run.closing_evaluation()
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
