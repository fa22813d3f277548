from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from skyeye.lab.world import held_out_scenes
from skyeye.model import TextDecoder, VisionEncoder, build_tiny_model, prompts
from skyeye.model.answers import Box
from skyeye.model.decoder import (
    IMAGE_TOKEN,
    DecodeOptions,
    _common_prefix_length,
    _ReservedLayer,
)
from skyeye.settings import PACKAGED_MODEL

INSTRUCTIONS = [
    prompts.caption(),
    prompts.refer("the small white boat near the pier"),
    prompts.detection("building"),
    prompts.vqa("Is there any water in the image?"),
    prompts.identify(Box(10, 20, 30, 40)),
    prompts.detailed_description(),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    build_tiny_model(path, seed=0)
    return path


@pytest.fixture(scope="module")
def decoder(model_dir: Path) -> TextDecoder:
    return TextDecoder.load(model_dir)


@pytest.fixture(scope="module")
def frames(model_dir: Path) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (200, 300, 3), dtype=np.uint8) for _ in range(3)]
    return VisionEncoder.load(model_dir).encode(images)


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of image positions in a row."""
    is_image = (row == IMAGE_TOKEN).tolist()
    runs: list[tuple[int, int]] = []
    for i, flag in enumerate(is_image):
        if flag and (i == 0 or not is_image[i - 1]):
            runs.append((i, i))
        if flag:
            runs[-1] = (runs[-1][0], i + 1)
    return runs


@pytest.mark.parametrize("n_frames", [1, 3])
def test_prompt_layout(decoder: TextDecoder, frames: torch.Tensor, n_frames: int) -> None:
    embeds = frames[0] if n_frames == 1 else frames[:n_frames]
    instructions = [prompts.caption(), prompts.vqa("How many ships are moored in the harbour?")]
    batch = decoder.prompt_batch(embeds, instructions)
    embed = decoder.llm.get_input_embeddings()
    tok = decoder.tokenizer
    lengths = batch.attention_mask.sum(dim=1).tolist()
    assert lengths[0] < lengths[1] == batch.token_ids.shape[1]
    for row, instruction in enumerate(instructions):
        ids, mask, inputs = (
            batch.token_ids[row],
            batch.attention_mask[row],
            batch.inputs_embeds[row],
        )
        start = ids.shape[0] - lengths[row]
        # Left padding: zeros, then the prompt.
        assert mask[:start].sum() == 0 and bool(mask[start:].all())
        assert not inputs[:start].any()
        prompt = ids[start:]
        assert prompt[0] == tok.bos_token_id and (prompt == tok.bos_token_id).sum() == 1
        runs = _runs(prompt)
        assert [end - begin for begin, end in runs] == [256] * n_frames
        for frame, (begin, end) in enumerate(runs):
            torch.testing.assert_close(inputs[start + begin : start + end], frames[frame])
        text_positions = (prompt != IMAGE_TOKEN).nonzero().squeeze(1) + start
        torch.testing.assert_close(inputs[text_positions], embed(ids[text_positions]))
        # The text around the images is the template, split at each <ImageHere>.
        cuts = [0, *(p for run in runs for p in run), len(prompt)]
        pieces = [
            tok.decode(prompt[a:b].tolist(), skip_special_tokens=True)
            for a, b in zip(cuts[::2], cuts[1::2], strict=True)
        ]
        expected = prompts.wrap(instruction, n_frames).split(prompts.IMAGE_PLACEHOLDER)
        assert pieces == expected


def test_batched_greedy_equals_one_at_a_time(decoder: TextDecoder, frames: torch.Tensor) -> None:
    batched = decoder.generate_ids(frames[0], INSTRUCTIONS, max_new_tokens=12)
    alone = [decoder.generate_ids(frames[0], [i], max_new_tokens=12)[0] for i in INSTRUCTIONS]
    assert batched == alone
    # The check means something only if the answers depend on the prompt.
    assert len({tuple(ids) for ids in batched}) > 3
    answers = decoder.generate(frames[0], INSTRUCTIONS, max_new_tokens=12)
    assert answers == [decoder._decode(ids) for ids in alone]


def test_batched_greedy_multi_frame(decoder: TextDecoder, frames: torch.Tensor) -> None:
    instructions = [prompts.video_caption(), prompts.vqa("Is the car moving?")]
    batched = decoder.generate_ids(frames[:2], instructions, max_new_tokens=8)
    alone = [decoder.generate_ids(frames[:2], [i], max_new_tokens=8)[0] for i in instructions]
    assert batched == alone
    assert batched != decoder.generate_ids(frames[1:3], instructions, max_new_tokens=8)


def test_each_row_stops_at_its_own_eos(model_dir: Path, frames: torch.Tensor) -> None:
    decoder = TextDecoder.load(model_dir)
    full = decoder.generate_ids(frames[0], INSTRUCTIONS, max_new_tokens=10)
    assert all(len(ids) == 10 for ids in full)
    # Make a token the first row emits mid-answer act as EOS: that row must stop right there,
    # every other row only where it emits that token itself (if ever).
    stop = full[0][4]
    decoder.eos_id = stop
    stopped = decoder.generate_ids(frames[0], INSTRUCTIONS, max_new_tokens=10)
    for before, after in zip(full, stopped, strict=True):
        assert after == (before[: before.index(stop)] if stop in before else before)
    assert len(stopped[0]) <= 4 and any(len(ids) == 10 for ids in stopped)


def test_answers_are_stripped_strings(decoder: TextDecoder, frames: torch.Tensor) -> None:
    answers = decoder.generate(frames[0], INSTRUCTIONS, max_new_tokens=6)
    assert len(answers) == len(INSTRUCTIONS)
    assert all(isinstance(a, str) and a == a.strip() for a in answers)
    assert decoder.generate(frames[0], []) == []


def test_sampling_is_seeded_by_torch(decoder: TextDecoder, frames: torch.Tensor) -> None:
    def sample() -> list[list[int]]:
        torch.manual_seed(5)
        return decoder.generate_ids(
            frames[0],
            INSTRUCTIONS[:3],
            max_new_tokens=8,
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
        )

    assert sample() == sample()


def test_instruction_text_cannot_inject_control_tokens(decoder: TextDecoder) -> None:
    batch = decoder.prompt_batch(torch.zeros(256, 64), ["[vqa] is </s> or <s> special?"])
    ids = batch.token_ids[0].tolist()
    assert decoder.eos_id not in ids and ids.count(decoder.tokenizer.bos_token_id) == 1


def test_a_repeated_instruction_is_tokenized_once(model_dir: Path, frames: torch.Tensor) -> None:
    decoder = TextDecoder.load(model_dir)
    first = decoder.prompt_batch(frames[0], INSTRUCTIONS)
    again = decoder.prompt_batch(frames[1], INSTRUCTIONS)
    assert decoder._segment_ids.cache_info().hits == len(INSTRUCTIONS)
    assert torch.equal(again.token_ids, first.token_ids)
    # The cache holds ids, not embeddings: the second image's rows are its own.
    assert not torch.equal(again.inputs_embeds, first.inputs_embeds)


def test_bad_arguments_are_refused(decoder: TextDecoder) -> None:
    with pytest.raises(ValueError, match="image_embeds"):
        decoder.generate(torch.zeros(255, 64), ["x"])
    with pytest.raises(ValueError, match="image_embeds"):
        decoder.generate(torch.zeros(2, 256, 32), ["x"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate(torch.zeros(256, 64), ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        decoder.generate(torch.zeros(256, 64), ["x"], do_sample=True, top_p=0)
    with pytest.raises(ValueError, match="top_k"):
        decoder.generate(torch.zeros(256, 64), ["x"], do_sample=True, top_k=-1)
    with pytest.raises(ValueError, match="repetition_penalty"):
        decoder.generate(torch.zeros(256, 64), ["x"], repetition_penalty=0)
    with pytest.raises(ValueError, match="ImageHere"):
        decoder.generate(torch.zeros(256, 64), ["<ImageHere>"])


def _reference(
    decoder: TextDecoder, embeds: torch.Tensor, instructions: list[str], n: int, **sampling: float
) -> list[list[int]]:
    """transformers' own generate on the left-padded batch: what the decoding loop must match."""
    do_sample = "temperature" in sampling or "top_p" in sampling
    config = GenerationConfig(
        max_new_tokens=n,
        do_sample=do_sample,
        num_beams=1,
        eos_token_id=decoder.eos_id,
        pad_token_id=decoder.pad_id,
        bos_token_id=decoder.tokenizer.bos_token_id,
        **sampling,
    )
    with torch.inference_mode():
        batch = decoder.prompt_batch(embeds, instructions)
        rows = decoder.llm.generate(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            generation_config=config,
        ).tolist()
    return [ids[: ids.index(decoder.eos_id)] if decoder.eos_id in ids else ids for ids in rows]


@pytest.mark.parametrize("n_frames", [1, 3])
def test_prefix_reuse_gives_the_same_greedy_tokens(
    decoder: TextDecoder, frames: torch.Tensor, n_frames: int
) -> None:
    embeds = frames[0] if n_frames == 1 else frames[:n_frames]
    instructions = [*INSTRUCTIONS, prompts.video_caption()]
    reused = decoder.generate_ids(embeds, instructions, max_new_tokens=10)
    plain = decoder.generate_ids(embeds, instructions, max_new_tokens=10, reuse_prefix=False)
    assert reused == plain == _reference(decoder, embeds, instructions, 10)
    for reuse in (True, False):
        alone = [
            decoder.generate_ids(embeds, [i], max_new_tokens=10, reuse_prefix=reuse)[0]
            for i in instructions
        ]
        assert alone == reused
    assert len({tuple(ids) for ids in reused}) > 3


def test_prefix_reuse_with_equal_and_nested_prompts(
    decoder: TextDecoder, frames: torch.Tensor
) -> None:
    # Equal prompts (nothing of their own after the prefix) and a prompt that is a prefix of
    # another must still each get their own last position.
    instructions = [prompts.vqa("Is it"), prompts.vqa("Is it"), prompts.vqa("Is it cloudy?")]
    reused = decoder.generate_ids(frames[0], instructions, max_new_tokens=8)
    assert reused == decoder.generate_ids(
        frames[0], instructions, max_new_tokens=8, reuse_prefix=False
    )
    assert reused[0] == reused[1]


@pytest.mark.parametrize("n_frames", [1, 2])
def test_shared_prefix_spans_every_frame(
    decoder: TextDecoder, frames: torch.Tensor, n_frames: int
) -> None:
    rows = [ids for ids, _ in decoder._rows(frames[:n_frames], INSTRUCTIONS)]
    shared = _common_prefix_length(rows)
    last_image = max(i for i, token in enumerate(rows[0]) if token == IMAGE_TOKEN)
    assert last_image < shared < min(len(ids) for ids in rows)
    assert all(ids[:shared] == rows[0][:shared] for ids in rows)


def test_common_prefix_length_leaves_every_row_a_position() -> None:
    assert _common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert _common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert _common_prefix_length([[1, 2], [1, 2, 3, 4]]) == 1
    assert _common_prefix_length([[7]]) == 0
    assert _common_prefix_length([[1, 2], [3, 4]]) == 0


def test_sampling_matches_generate_and_ignores_reuse(
    decoder: TextDecoder, frames: torch.Tensor
) -> None:
    settings = {"temperature": 0.7, "top_p": 0.9}
    torch.manual_seed(11)
    expected = _reference(decoder, frames[0], INSTRUCTIONS, 8, **settings)
    for reuse in (True, False):
        torch.manual_seed(11)
        assert (
            decoder.generate_ids(
                frames[0],
                INSTRUCTIONS,
                max_new_tokens=8,
                do_sample=True,
                reuse_prefix=reuse,
                **settings,
            )
            == expected
        )


def test_sampling_draws_from_the_given_generator(
    decoder: TextDecoder, frames: torch.Tensor
) -> None:
    def sample(seed: int, reuse: bool = True) -> list[list[int]]:
        return decoder.generate_ids(
            frames[0],
            INSTRUCTIONS,
            max_new_tokens=8,
            do_sample=True,
            repetition_penalty=1.05,
            generator=torch.Generator().manual_seed(seed),
            reuse_prefix=reuse,
        )

    first = sample(3)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    assert sample(3) == first == sample(3, reuse=False)
    # The global RNG is left alone.
    assert torch.rand(1) == before
    assert sample(4) != first


@pytest.mark.filterwarnings("ignore:Passing `repetition_penalty` with `inputs_embeds`")
def test_greedy_repetition_penalty_matches_generate_row_by_row(
    decoder: TextDecoder, frames: torch.Tensor
) -> None:
    # Row by row: transformers 5.24's generate skips the first <left padding length> *new* tokens
    # of a padded row when it penalises (it takes them for prompt tokens), so its batched answer
    # depends on the other rows; transformers 4.30, MiniGPT-v2's pin, penalised all new tokens.
    penalised = decoder.generate_ids(
        frames[0], INSTRUCTIONS, max_new_tokens=12, repetition_penalty=1.5
    )
    assert penalised == [
        _reference(decoder, frames[0], [i], 12, repetition_penalty=1.5)[0] for i in INSTRUCTIONS
    ]
    assert penalised != decoder.generate_ids(frames[0], INSTRUCTIONS, max_new_tokens=12)


def test_generate_many_decodes_items_as_each_alone(
    decoder: TextDecoder, frames: torch.Tensor
) -> None:
    # Items of one and of three frames (prefixes of different lengths), different task counts,
    # an item without tasks.
    items = [
        (frames[0], INSTRUCTIONS),
        (frames[:3], [prompts.video_caption(), prompts.vqa("Is the car moving?")]),
        (frames[1], []),
        (frames[2], [prompts.detection("building")]),
    ]
    many = decoder.generate_ids_many(items, max_new_tokens=10)
    alone = [
        decoder.generate_ids(embeds, list(tasks), max_new_tokens=10) for embeds, tasks in items
    ]
    assert many == alone == [_reference(decoder, e, list(t), 10) if t else [] for e, t in items]
    assert decoder.generate_ids_many(items, max_new_tokens=10, reuse_prefix=False) == many
    assert decoder.generate_many(items, max_new_tokens=10) == [
        [decoder._decode(ids) for ids in item] for item in many
    ]
    assert decoder.generate_many([]) == [] and decoder.generate_many([(frames[0], [])]) == [[]]


def test_generate_many_refuses_bad_items(decoder: TextDecoder, frames: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="image_embeds"):
        decoder.generate_many([(frames[0], ["x"]), (torch.zeros(255, 64), ["x"])])
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate_many([(frames[0], ["x"])], max_new_tokens=0)


def test_seeded_sampling_of_many_items_is_repeatable(
    decoder: TextDecoder, frames: torch.Tensor
) -> None:
    items = [(frames[0], INSTRUCTIONS[:3]), (frames[:2], [prompts.video_caption()])]

    def sample(seed: int) -> list[list[list[int]]]:
        return decoder.generate_ids_many(
            items, 8, do_sample=True, temperature=0.7, generator=torch.Generator().manual_seed(seed)
        )

    assert sample(2) == sample(2) != sample(3)


def test_double_bos_starts_each_prompt_with_two_bos(model_dir: Path, frames: torch.Tensor) -> None:
    single, double = TextDecoder.load(model_dir), TextDecoder.load(model_dir, double_bos=True)
    bos = single.tokenizer.bos_token_id
    instructions = [prompts.caption(), prompts.vqa("[vqa] is <s> special?")]
    for n_frames in (1, 2):
        one = single.prompt_batch(frames[:n_frames], instructions)
        two = double.prompt_batch(frames[:n_frames], instructions)
        for row in range(len(instructions)):
            ids = one.token_ids[row][one.attention_mask[row] == 1].tolist()
            ids2 = two.token_ids[row][two.attention_mask[row] == 1].tolist()
            assert ids[0] == bos and ids.count(bos) == 1
            assert ids2 == [bos, *ids]
    assert not single.double_bos and double.double_bos
    # Decoded from the two-BOS prompt, with the shared prefix reused as with one.
    answers = double.generate_ids(frames[0], INSTRUCTIONS, max_new_tokens=10)
    assert answers == _reference(double, frames[0], INSTRUCTIONS, 10)
    assert answers != single.generate_ids(frames[0], INSTRUCTIONS, max_new_tokens=10)


@pytest.fixture(scope="module")
def packaged() -> tuple[TextDecoder, torch.Tensor]:
    """The packaged skyeye-tiny's decoder and the embeddings of four held-out world scenes."""
    images = [scene.image for scene in held_out_scenes(4, seed=0)]
    return TextDecoder.load(PACKAGED_MODEL), VisionEncoder.load(PACKAGED_MODEL).encode(images)


def test_tiles_batched_give_the_answers_of_each_tile_alone(
    packaged: tuple[TextDecoder, torch.Tensor],
) -> None:
    """The served model, as the LlmDecoder batches tiles: answers as one tile at a time."""
    decoder, embeds = packaged
    six = [
        prompts.caption(),
        prompts.detection("building"),
        prompts.detection("storage tank"),
        prompts.detection("small white boat"),
        prompts.vqa("Is there any water in the image?"),
        prompts.vqa("How many cars are in the parking lot?"),
    ]
    items = [
        (embeds[0], [prompts.caption()]),
        (embeds[1], six),
        (embeds[:3], [prompts.video_caption(), prompts.vqa("Is there any water in the image?")]),
        (embeds[3], six[1:4]),
        (embeds[2:4], [prompts.video_caption()]),
    ]
    batched = decoder.generate_ids_many(items, max_new_tokens=20)
    per_tile = [decoder.generate_ids(e, list(tasks), max_new_tokens=20) for e, tasks in items]
    plain = [
        decoder.generate_ids(e, list(tasks), max_new_tokens=20, reuse_prefix=False)
        for e, tasks in items
    ]
    assert batched == per_tile == plain
    assert [len(answers) for answers in batched] == [1, 6, 2, 3, 1]
    # Real answers of different lengths (boxes, words, yes/no), not one repeated token run.
    flat = [tuple(ids) for answers in batched for ids in answers]
    assert len(set(flat)) > 8 and len({len(ids) for ids in flat}) > 3


def test_reserved_cache_layer_appends_in_place_and_follows_other_changes() -> None:
    def states(length: int, rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(rows, 1, length, 4), torch.randn(rows, 1, length, 4)

    layer = _ReservedLayer()
    keys0, values0 = states(3)
    layer.update(keys0, values0)
    layer.reserve(2)
    keys1, values1 = states(1)
    keys, values = layer.update(keys1, values1)
    assert layer._room is not None and keys.data_ptr() == layer._room[0].data_ptr()
    expected_keys = torch.cat([keys0, keys1], dim=-2)
    assert torch.equal(keys, expected_keys)
    assert torch.equal(values, torch.cat([values0, values1], dim=-2))
    # Another change of the layer replaces its tensors: later positions follow those.
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    keys2, values2 = states(1, rows=3)
    keys, _ = layer.update(keys2, values2)
    assert torch.equal(keys, torch.cat([expected_keys[[1, 1, 0]], keys2], dim=-2))
    # More positions than the room holds: appended all the same.
    layer.reserve(1)
    keys3, values3 = states(2, rows=3)
    before = keys
    keys, _ = layer.update(keys3, values3)
    assert torch.equal(keys, torch.cat([before, keys3], dim=-2))


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_static_steps_give_the_answers_of_growing_steps(
    model_dir: Path, frames: torch.Tensor, reuse_prefix: bool
) -> None:
    """Static caches of several shapes (8 and 16 rows, two lengths), grown and reused."""
    growing, static = TextDecoder.load(model_dir), TextDecoder.load(model_dir, steps="static")
    calls = [
        # 6 rows (8 with the spares), then 1 row (8), then 12 rows: the 8-row buffer grows to 16
        [(frames[0], INSTRUCTIONS)],
        [(frames[1], [prompts.caption()])],
        [(frames[0], INSTRUCTIONS), (frames[2], INSTRUCTIONS)],
        # three frames and more new tokens: a longer static cache
        [(frames, [prompts.video_caption(), prompts.vqa("Is the car moving?")])],
        # the first shape again, other images: its cache is reused
        [(frames[2], INSTRUCTIONS)],
    ]
    for items in calls:
        options: DecodeOptions = {"max_new_tokens": 10, "reuse_prefix": reuse_prefix}
        if len(items[0][1]) == 2:
            options["max_new_tokens"] = 140
        assert static.generate_ids_many(items, **options) == growing.generate_ids_many(
            items, **options
        )
    assert static._static is not None
    # growing the 384 buffer to 16 rows dropped the caches viewing the old one; 8 rows came back
    assert sorted(static._static._caches) == [(8, 384), (8, 1024), (16, 384)]
    assert static._static._buffers[384][0][0].shape[0] == 16
    with_penalty: DecodeOptions = {"max_new_tokens": 12, "repetition_penalty": 1.5}
    assert static.generate_ids(frames[0], INSTRUCTIONS, **with_penalty) == growing.generate_ids(
        frames[0], INSTRUCTIONS, **with_penalty
    )


def test_compiled_steps_warmed_up_give_the_same_answers_and_never_compile_again(
    model_dir: Path, frames: torch.Tensor
) -> None:
    """torch.compile's CPU backend (inductor): after warm_up, no batch's shape compiles."""
    growing, compiled = TextDecoder.load(model_dir), TextDecoder.load(model_dir, steps="compiled")
    compiled.warm_up()
    calls = [
        [(frames[0], INSTRUCTIONS[:3])],  # 8 rows with the spares
        [(frames[1], INSTRUCTIONS), (frames[2], INSTRUCTIONS[:5])],  # 16
        # 24 rows and a three-frame item: a longer cache than any warm_up made
        [(frames[2], INSTRUCTIONS), (frames[0], INSTRUCTIONS), (frames, [prompts.caption()])],
        [(frames[:2], INSTRUCTIONS[:2]), (frames[0], INSTRUCTIONS)],  # two frames, 8 rows
    ]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for items in calls:
            assert compiled.generate_ids_many(items) == growing.generate_ids_many(items)
        TextDecoder.load(model_dir, steps="static").warm_up()  # nothing to compile
