"""skyeye.lab.training at toy size: it learns, saves a loadable folder, repeats from a seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import DynamicCache

from skyeye.lab.training import (
    LOG_FILE,
    Stages,
    _colour_loss,
    _cosine,
    _decoded,
    _dense_loss,
    _difficulty_cap,
    _Run,
    box_tokens,
    dense_targets,
    number_features,
    patch_labels,
    train,
)
from skyeye.lab.world import OBJECT_COLOURS, Scene, render_scene
from skyeye.model import TextDecoder, VisionEncoder
from skyeye.model.checkpoint import read_manifest
from skyeye.model.config import LlmConfig, ModelConfig, VisionConfig
from skyeye.model.vision import preprocess
from skyeye.model.vocabulary import tiny_vocabulary
from skyeye.settings import PACKAGED_MODEL

# 112 px keeps patch 14 and the 1x4 merge (an 8x8 grid, 16 image tokens) at a fraction of the cost.
TOY = ModelConfig(
    vision=VisionConfig(
        image_size=112, hidden_size=16, num_layers=2, num_heads=2, mlp_hidden_size=32
    ),
    llm=LlmConfig(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        vocab_size=len(tiny_vocabulary()),
    ),
)
FEW = Stages(
    pretrain_steps=2,
    pretrain_images=2,
    instruct_steps=3,
    images_per_step=2,
    questions_per_image=3,
    warmup_steps=1,
    progress_every=1,
    eval_scenes=0,
)


def _train(
    folder: Path,
    seed: int,
    stages: Stages = FEW,
    minutes: float = 1.0,
    workers: int = 0,
    tower: Path | None = None,
    config: ModelConfig = TOY,
    init: Path | None = None,
) -> list[str]:
    lines: list[str] = []
    train(
        folder,
        seed=seed,
        minutes=minutes,
        config=config,
        stages=stages,
        progress=lines.append,
        workers=workers,
        tower=tower,
        init=init,
    )
    return lines


def _pixels(scenes: list[Scene]) -> torch.Tensor:
    return preprocess([s.image for s in scenes], TOY.vision.image_size)


def test_patch_labels_mark_objects_and_water() -> None:
    scene = render_scene(5, size=112, difficulty=0.0, scene_class="harbour")
    labels = patch_labels(scene, 8)
    assert labels.shape == (8, 8)
    assert set(np.unique(labels)) <= set(range(7))
    assert (labels == 6).any()  # a harbour has open water
    assert ((labels > 0) & (labels < 6)).any() == bool(scene.objects)


def test_dense_targets_give_patch_centres_and_object_boxes() -> None:
    scene = render_scene(5, size=112, difficulty=0.0)
    values, has_object, _ = dense_targets(scene, 8)
    assert values.shape == (64, 6)
    assert has_object.shape == (64,)
    # Row-major patch centres on the 0-100 scale.
    assert values[1, :2].tolist() == [18.75, 6.25]
    assert values[8, :2].tolist() == [6.25, 18.75]
    # An object patch carries the model box of an object; other patches carry zeros.
    boxes = {
        tuple(int(v) for v in str(o.model_box(112, 112))[1:-1].strip("<>").split("><"))
        for o in scene.objects
    }
    assert has_object.any() == bool(scene.objects)
    assert {tuple(int(v) for v in row) for row in values[has_object, 2:]} <= boxes
    assert not values[~has_object, 2:].any()


def test_dense_targets_name_the_colour_of_each_object_patch() -> None:
    scene = render_scene(5, size=112, difficulty=0.0)
    values, has_object, colours = dense_targets(scene, 8)
    assert colours.shape == (64,)
    assert has_object.any()
    assert ((colours > 0) == has_object).all()
    # Each object patch has the colour of the object whose box dense_targets gives it.
    boxes = [(o.model_box(112, 112), o.colour) for o in scene.objects]
    colour_of = {(b.x1, b.y1, b.x2, b.y2): colour for b, colour in boxes}
    for row, colour in zip(values[has_object, 2:], colours[has_object], strict=True):
        assert OBJECT_COLOURS[colour - 1] == colour_of[tuple(int(v) for v in row)]
    empty = next(
        s
        for s in (render_scene(seed, 112, 0.0, scene_class="forest") for seed in range(100))
        if not s.objects
    )
    assert not dense_targets(empty, 8).colours.any()


def test_colour_loss_is_object_patches_plus_background_towards_zero() -> None:
    head = torch.nn.Linear(len(OBJECT_COLOURS), len(OBJECT_COLOURS))
    with torch.no_grad():
        head.weight.copy_(torch.eye(len(OBJECT_COLOURS)))
        head.bias.zero_()
    eye = torch.eye(len(OBJECT_COLOURS))
    colours = torch.tensor([[3, 0]])  # an object patch of colour 2, a background patch
    assert _colour_loss(head, torch.stack([eye[2], eye[2] * 0])[None], colours) == 0
    # A colour on the background costs its squared norm, averaged over all patches.
    assert _colour_loss(head, torch.stack([eye[2], eye[5]])[None], colours) == 0.5
    assert _colour_loss(head, torch.stack([eye[4], eye[2] * 0])[None], colours) == 2


def test_number_features_decode_back_to_every_value() -> None:
    values = torch.arange(101)
    features = number_features(values)
    assert features.shape == (101, 12)
    assert torch.equal(_decoded(features), values.float())
    # Neighbouring values are more alike than distant ones: the structure the embeddings share.
    similarity = features @ features.T
    assert set(similarity[50].topk(3).indices.tolist()) == {49, 50, 51}


def test_number_embeddings_and_soft_targets(tmp_path: Path) -> None:
    run = _Run(tmp_path / "m", 0, 1.0, TOY, FEW, lambda _: None)
    run.structure_numbers()
    table = run.llm.get_input_embeddings().weight
    head = run.llm.get_output_embeddings().weight
    features = number_features(torch.arange(101))
    for weights in (table, head):
        rows = weights[run.number_ids, :12]
        assert torch.allclose(rows / rows.norm(dim=-1, keepdim=True), features / 6**0.5, atol=1e-5)
    # A logit peaked one step off the true number costs less than one peaked far off.
    vocab = TOY.llm.vocab_size
    target = run.number_ids[40]
    logits = torch.zeros(2, 1, vocab)
    logits[0, 0, run.number_ids[41]] = 5.0
    logits[1, 0, run.number_ids[90]] = 5.0
    losses = run._token_losses(logits, torch.full((2, 1), int(target)))
    assert losses[0, 0] < losses[1, 0]
    hard = Stages(**{**FEW.__dict__, "number_sigma": 0.0})
    run.stages = hard
    losses = run._token_losses(logits, torch.tensor([[int(target)], [-100]]))
    assert losses[0, 0] == pytest.approx(F.cross_entropy(logits[0], target[None]).item())
    assert losses[1, 0] == 0


def test_box_tokens_are_the_merged_tokens_a_box_overlaps() -> None:
    # Grid 32, merge 4: a token spans 12.5 of the 0-100 scale across and 3.125 down.
    assert box_tokens((0, 0, 12, 3), 100, 32, 4).tolist() == [0]
    assert box_tokens((10, 2, 30, 5), 100, 32, 4).tolist() == [0, 1, 2, 8, 9, 10]
    # A box thinner than a token still has one.
    assert box_tokens((99, 99, 99, 99), 100, 32, 4).tolist() == [255]


def test_attention_supervision_adds_a_loss_on_refer_answers(tmp_path: Path) -> None:
    refer_only = {**FEW.__dict__, "kind_weights": {"refer": 1.0}}
    scenes = [render_scene(s, size=112, difficulty=0.0) for s in (1, 2)]
    losses = []
    for weight in (0.0, 1.0):
        stages = Stages(**{**refer_only, "attention_supervision": weight})
        run = _Run(tmp_path / "m", 0, 1.0, TOY, stages, lambda _: None)
        run.question_rng = np.random.default_rng(0)
        loss, _ = run.instruct_loss(scenes, _pixels(scenes))
        loss.backward()
        losses.append(loss.item())
    # Same seed, same weights and questions: the difference is the attention term alone.
    assert math.isfinite(losses[1])
    assert losses[1] > losses[0] + 0.5


def test_recomputed_head_attention_is_eager_attention(tmp_path: Path) -> None:
    config = TOY.model_copy(update={"llm": TOY.llm.model_copy(update={"num_layers": 2})})
    run = _Run(tmp_path / "m", 0, 1.0, config, FEW, lambda _: None)
    run.llm.eval()
    inputs = torch.randn(3, 9, config.llm.hidden_size)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 7:] = 0  # right padding, as training batches rows of different lengths
    with torch.no_grad():
        # As training runs it: a cached prefix of 4 positions, then the rest against it.
        cache = DynamicCache(config=run.llm.config)
        run.llm(inputs_embeds=inputs[:, :4], cache=cache, use_cache=True)
        run.llm(
            inputs_embeds=inputs[:, 4:],
            attention_mask=mask,
            position_ids=torch.arange(4, 9).expand(3, -1),
            cache=cache,
            use_cache=True,
        )
        queries = [0, 2]  # positions 4 and 6 of the whole row
        recomputed = run.last_attention.weights(1, queries, cache.layers[-1].keys[1, 0])
        run.llm.set_attn_implementation("eager")
        eager = run.llm(inputs_embeds=inputs, attention_mask=mask, output_attentions=True)
    expected = eager.attentions[-1][1][0, [4, 6]]
    assert recomputed.shape == expected.shape == (2, 9)
    torch.testing.assert_close(recomputed, expected, atol=1e-6, rtol=1e-5)


def _whole_sequence_loss(run: _Run, scenes: list[Scene], pixels: torch.Tensor) -> torch.Tensor:
    """The answer loss computed directly: every sequence whole, right-padded, no cache."""
    embeds = run.vision(pixels)
    embed = run.llm.get_input_embeddings()
    rows, answers, prompt_lengths = [], [], []
    for scene, image in zip(scenes, embeds, strict=True):
        questions = run._questions(scene)
        prompts = run.decoder._rows(image, [q.instruction for q in questions])
        for (ids, prompt), question in zip(prompts, questions, strict=True):
            answer = run._answer_ids(question.answer)
            rows.append(torch.cat([prompt, embed(torch.tensor(answer))]))
            answers.append(answer)
            prompt_lengths.append(len(ids))
    length = max(r.shape[0] for r in rows)
    inputs = torch.zeros((len(rows), length, rows[0].shape[1]))
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    targets = torch.full((len(rows), length), -100)
    for i, (row, answer, n) in enumerate(zip(rows, answers, prompt_lengths, strict=True)):
        inputs[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
        targets[i, n - 1 : n - 1 + len(answer)] = torch.tensor(answer)
    logits = run.llm(inputs_embeds=inputs, attention_mask=mask).logits
    per_token = run._token_losses(logits, targets)
    return (per_token.sum(dim=1) / (targets != -100).sum(dim=1)).mean()


def test_the_shared_prefix_loss_is_the_whole_sequence_loss(tmp_path: Path) -> None:
    config = TOY.model_copy(update={"llm": TOY.llm.model_copy(update={"num_layers": 2})})
    stages = Stages(**{**FEW.__dict__, "attention_supervision": 0.0, "questions_per_image": 5})
    run = _Run(tmp_path / "m", 0, 1.0, config, stages, lambda _: None)
    scenes = [render_scene(s, size=112, difficulty=0.5) for s in (1, 2, 3)]
    gradients = []
    for loss_of in (run.instruct_loss, lambda *a: (_whole_sequence_loss(run, *a), 0)):
        run.question_rng = np.random.default_rng(0)
        run.llm.zero_grad()
        run.vision.zero_grad()
        loss, _ = loss_of(scenes, _pixels(scenes))
        loss.backward()
        weights = (run.vision.llama_proj.weight, run.llm.model.layers[0].self_attn.q_proj.weight)
        gradients.append((loss.detach(), *(w.grad.clone() for w in weights)))
    for shared, whole in zip(*gradients, strict=True):
        torch.testing.assert_close(shared, whole, atol=1e-5, rtol=1e-4)


def test_zero_background_boxes_adds_the_background_term() -> None:
    scenes = [render_scene(s, size=112, difficulty=0.0) for s in (1, 2)]
    tokens = torch.randn(2, 64, 8)
    regressor = torch.nn.Linear(8, 6 * 12)
    targets = [dense_targets(s, 8) for s in scenes]
    values = torch.from_numpy(np.stack([t.values for t in targets]))
    has_object = torch.from_numpy(np.stack([t.has_object for t in targets]))
    plain = _dense_loss(regressor, tokens, values, has_object, zero_background=False)
    zero = _dense_loss(regressor, tokens, values, has_object, zero_background=True)
    assert zero > plain


def test_loss_is_finite_and_falls_on_a_fixed_batch(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    run = _Run(tmp_path / "m", 0, 1.0, TOY, FEW, lambda _: None)
    scenes = [render_scene(s, size=112, difficulty=0.0) for s in (1, 2)]
    params = [*run.llm.parameters(), *run.vision.parameters()]
    optimiser = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(8):
        # The same questions every time: this checks fitting, not sampling.
        run.question_rng = np.random.default_rng(0)
        loss, n = run.instruct_loss(scenes, _pixels(scenes))
        assert n == 6
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_same_seed_same_weights_and_the_folder_loads(tmp_path: Path) -> None:
    lines = _train(tmp_path / "a", seed=7, stages=Stages(**{**FEW.__dict__, "eval_scenes": 1}))
    # rendering scenes in worker processes draws the same scenes in the same order
    _train(tmp_path / "b", seed=7, workers=2)
    assert any(line.startswith("instruct step 3/3") for line in lines)
    for name in ("vision.safetensors", "llm/model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    _train(tmp_path / "c", seed=8)
    assert (tmp_path / "a/vision.safetensors").read_bytes() != (
        tmp_path / "c/vision.safetensors"
    ).read_bytes()

    log = json.loads((tmp_path / "a" / LOG_FILE).read_text())
    assert log["seed"] == 7
    assert log["steps"] == {"pretrain": 2, "instruct": 3}
    assert set(log["evaluation"]) >= {"grounding", "vqa"}
    encoder = VisionEncoder.load(tmp_path / "a")
    decoder = TextDecoder.load(tmp_path / "a")
    image = render_scene(3, size=112).image
    answers = decoder.generate(
        encoder.encode([image])[0], ["[vqa] Is there a ship?"], max_new_tokens=4
    )
    assert len(answers) == 1


def test_a_tower_from_an_earlier_run_replaces_stage_1(tmp_path: Path) -> None:
    _train(tmp_path / "tower", seed=7, stages=Stages(**{**FEW.__dict__, "instruct_steps": 0}))
    sized = Stages(**{**FEW.__dict__, "pretrain_steps": None})
    lines = _train(tmp_path / "m", seed=7, tower=tmp_path / "tower", stages=sized)
    assert not any(line.startswith("pretrain") for line in lines)
    log = json.loads((tmp_path / "m" / LOG_FILE).read_text())
    earlier = json.loads((tmp_path / "tower" / LOG_FILE).read_text())
    assert log["steps"] == {"pretrain": 0, "instruct": 3}
    assert log["tower"]["origin"]["steps"] == {"pretrain": 2, "instruct": 0}
    assert log["patch_accuracy"] == earlier["patch_accuracy"] != {}
    # Stage 2 leaves the tower's layers as they were (tune_vision_layers 0); llama_proj learns.
    tower = load_file(tmp_path / "tower" / "vision.safetensors")
    tuned = load_file(tmp_path / "m" / "vision.safetensors")
    layers = [k for k in tower if ".encoder.layers." in k]
    assert layers and all(torch.equal(tower[k], tuned[k]) for k in layers)
    assert not torch.equal(tower["llama_proj.weight"], tuned["llama_proj.weight"])

    wider = TOY.model_copy(update={"vision": TOY.vision.model_copy(update={"hidden_size": 32})})
    with pytest.raises(ValueError, match="its vision tower is"):
        _train(tmp_path / "w", seed=7, tower=tmp_path / "tower", config=wider)


def test_a_tower_and_pretrain_steps_continue_stage_1_from_it(tmp_path: Path) -> None:
    _train(tmp_path / "tower", seed=7, stages=Stages(**{**FEW.__dict__, "instruct_steps": 0}))
    stages = Stages(**{**FEW.__dict__, "instruct_steps": 0, "colour_weight": 1.0})
    lines = _train(tmp_path / "m", seed=7, tower=tmp_path / "tower", stages=stages)
    assert any(line.startswith("pretrain step 2/2") for line in lines)
    log = json.loads((tmp_path / "m" / LOG_FILE).read_text())
    assert log["steps"] == {"pretrain": 2, "instruct": 0}
    assert log["tower"]["origin"]["steps"] == {"pretrain": 2, "instruct": 0}
    assert 0 <= log["patch_accuracy"]["colour_accuracy"] <= 1
    tower = load_file(tmp_path / "tower" / "vision.safetensors")
    trained = load_file(tmp_path / "m" / "vision.safetensors")
    layers = [k for k in tower if ".encoder.layers." in k]
    assert not all(torch.equal(tower[k], trained[k]) for k in layers)


def test_init_trains_every_weight_of_an_earlier_run_further(tmp_path: Path) -> None:
    _train(tmp_path / "a", seed=7)
    files = ("vision.safetensors", "llm/model.safetensors")

    def same(folder: Path) -> bool:
        pairs = [(load_file(tmp_path / "a" / f), load_file(folder / f)) for f in files]
        return all(torch.equal(a[k], b[k]) for a, b in pairs for k in a)

    # No steps: the weights come back as they were (the projector is not rescaled again, the
    # number embeddings not rewritten).
    further = Stages(**{**FEW.__dict__, "pretrain_steps": None})
    none = Stages(**{**further.__dict__, "instruct_steps": 0})
    _train(tmp_path / "none", seed=8, init=tmp_path / "a", stages=none)
    assert same(tmp_path / "none")
    lines = _train(tmp_path / "b", seed=8, init=tmp_path / "a", stages=further)
    assert not any(line.startswith("pretrain") for line in lines)
    assert not same(tmp_path / "b")
    log = json.loads((tmp_path / "b" / LOG_FILE).read_text())
    assert log["steps"] == {"pretrain": 0, "instruct": 3}
    assert log["init"]["origin"]["steps"] == {"pretrain": 2, "instruct": 3}
    assert log["stages"]["curriculum"] is False
    assert log["losses"] and "losses" not in log["init"]["log"]

    # A third generation keeps the whole lineage, every earlier loss curve left in its own folder.
    _train(tmp_path / "c", seed=9, init=tmp_path / "b", stages=further)
    log = json.loads((tmp_path / "c" / LOG_FILE).read_text())
    assert log["init"]["log"]["seed"] == 8
    assert log["init"]["log"]["init"]["log"]["seed"] == 7
    assert "losses" not in log["init"]["log"]["init"]["log"]

    wider = TOY.model_copy(update={"vision": TOY.vision.model_copy(update={"hidden_size": 32})})
    with pytest.raises(ValueError, match="its model is"):
        _train(tmp_path / "w", seed=7, init=tmp_path / "a", config=wider)
    with pytest.raises(ValueError, match="not both"):
        _train(tmp_path / "w", seed=7, init=tmp_path / "a", tower=tmp_path / "a")


def test_a_time_budget_sizes_the_steps(tmp_path: Path) -> None:
    stages = Stages(**{**FEW.__dict__, "pretrain_share": 0.0, "instruct_steps": None})
    lines = _train(tmp_path / "m", seed=1, stages=stages, minutes=0.02)
    log = json.loads((tmp_path / "m" / LOG_FILE).read_text())
    assert log["steps"]["pretrain"] == 0
    total = log["steps"]["instruct"]
    assert total >= 2
    steps = [line.split(" loss")[0] for line in lines if line.startswith("instruct step")]
    # Step 1 comes before the pace sizes the run (at 2 * warmup_steps); after it, the total.
    assert steps[0] == "instruct step 1 (sizing the steps)"
    assert steps[1:] == [f"instruct step {n}/{total}" for n in range(2, total + 1)]


def test_schedule_before_sizing_ignores_the_total() -> None:
    # Warm-up and plateau (steps < 2 * warmup_steps) run before a time budget fixes the total.
    for step in (0, 1):
        assert _cosine(step, 10, 1) == _cosine(step, 10**9, 1)
        assert _difficulty_cap(step, 10, 1, True) == _difficulty_cap(step, 10**9, 1, True)
    assert _cosine(10, 10, 1) == pytest.approx(0.1)
    assert _difficulty_cap(10, 10, 1, True) == 1.0


def test_the_packaged_model_is_trained_skyeye_tiny_and_loads() -> None:
    manifest = read_manifest(PACKAGED_MODEL)
    assert manifest.config == ModelConfig.skyeye_tiny()
    # trained before the lab moved to skyeye.lab; provenance keeps the name it had then
    assert manifest.origin["builder"] == "skyeye.training"
    log = json.loads((PACKAGED_MODEL / LOG_FILE).read_text())
    assert log["steps"] == manifest.origin["steps"]
    encoder = VisionEncoder.load(PACKAGED_MODEL)
    embeds = encoder.encode([np.zeros((64, 64, 3), np.uint8)])
    assert embeds.shape == (1, 256, ModelConfig.skyeye_tiny().llm.hidden_size)
