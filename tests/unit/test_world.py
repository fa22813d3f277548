import numpy as np
import pytest
from PIL import Image

from skyeye.lab.world import (
    EVAL_SEED_BASE,
    MAX_DETECTION_BOXES,
    OBJECT_CLASSES,
    SCENE_CLASSES,
    TRAINING_SEED_LIMIT,
    Scene,
    SceneObject,
    caption,
    held_out_scene_seeds,
    held_out_scenes,
    make_samples,
    refer_expressions,
    render_scene,
)
from skyeye.model import prompts
from skyeye.model.answers import parse_boxes, parse_detection
from skyeye.samples import world_scene

SIZE = 448


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    """Every scene class at an easy, a middling and a hard setting."""
    return [
        render_scene(seed, difficulty=difficulty, scene_class=scene_class)
        for seed, (scene_class, difficulty) in enumerate(
            (c, d) for c in SCENE_CLASSES for d in (0.0, 0.5, 1.0)
        )
    ]


def _mask(scene: Scene, index: int) -> np.ndarray:
    return scene.instances == index + 1


def test_a_seed_gives_the_same_scene_and_answers() -> None:
    first, second = render_scene(1234, difficulty=0.7), render_scene(1234, difficulty=0.7)
    assert first.image.tobytes() == second.image.tobytes()
    assert first.objects == second.objects
    assert [(s.instruction, s.answer) for s in make_samples(first)] == [
        (s.instruction, s.answer) for s in make_samples(second)
    ]
    generator = render_scene(np.random.default_rng(1234), difficulty=0.7)
    assert generator.image.tobytes() == first.image.tobytes()
    assert render_scene(1235, difficulty=0.7).image.tobytes() != first.image.tobytes()


def test_image_and_ground_truth_shapes(scenes: list[Scene]) -> None:
    for scene in scenes:
        assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
        assert scene.water.shape == scene.instances.shape == (SIZE, SIZE)
        assert scene.scene_class in SCENE_CLASSES
        assert {o.kind for o in scene.objects} <= set(OBJECT_CLASSES)


def test_boxes_are_inside_the_image_and_hug_the_object_masks(scenes: list[Scene]) -> None:
    for scene in scenes:
        for index, obj in enumerate(scene.objects):
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            ys, xs = np.nonzero(_mask(scene, index))
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box
            assert obj.area == xs.size
            box = obj.model_box(SIZE, SIZE)
            assert box.x1 < box.x2 and box.y1 < box.y2  # never a line on the 0-100 scale


def test_building_boxes_are_filled_with_roof_colour(scenes: list[Scene]) -> None:
    buildings = [
        (scene, index, obj)
        for scene in scenes
        for index, obj in enumerate(scene.objects)
        if obj.kind == "building"
    ]
    assert len(buildings) > 20
    for scene, index, obj in buildings:
        x1, y1, x2, y2 = obj.box
        assert _mask(scene, index)[y1:y2, x1:x2].all()  # buildings stand square to the image
        pixels = scene.image[y1:y2, x1:x2].reshape(-1, 3).astype(np.float32)
        rgb = np.array(obj.rgb, dtype=np.float32)
        # The lit roof, the roof half in shade, a rooftop plant; plus a little sensor noise.
        tones = np.stack([rgb, rgb * 0.8, rgb * 0.7])
        distance = np.abs(pixels[:, None, :] - tones[None, :, :]).max(axis=2).min(axis=1)
        assert (distance <= 5).mean() > 0.95


def test_ships_are_only_on_water(scenes: list[Scene]) -> None:
    ships = 0
    for scene in scenes:
        for index, obj in enumerate(scene.objects):
            if obj.kind == "ship":
                ships += 1
                assert scene.water[_mask(scene, index)].all()
    assert ships > 5


def test_every_scene_class_has_its_water() -> None:
    for seed, scene_class in enumerate(SCENE_CLASSES):
        scene = render_scene(seed, difficulty=0.5, scene_class=scene_class)
        expected = {"lake": "lake", "river": "river", "harbour": "sea"}.get(scene_class)
        assert scene.water_body == expected
        assert scene.water.mean() > (0.05 if expected else -1)
        assert scene.water.any() == (expected is not None)


def test_objects_belong_to_their_scenes() -> None:
    for seed in range(6):
        airport = render_scene(seed, difficulty=0.5, scene_class="airport")
        assert airport.of_kind("aircraft")
        assert not airport.of_kind("ship")
        harbour = render_scene(seed, difficulty=0.5, scene_class="harbour")
        assert harbour.of_kind("ship")
        assert not harbour.of_kind("aircraft")


def test_difficulty_trades_large_objects_for_many_small_ones() -> None:
    easy = [render_scene(s, difficulty=0.0, scene_class="residential") for s in range(6)]
    hard = [render_scene(s, difficulty=1.0, scene_class="residential") for s in range(6)]
    easy_objects = [o for scene in easy for o in scene.objects]
    hard_objects = [o for scene in hard for o in scene.objects]
    assert len(hard_objects) > 2 * len(easy_objects)
    assert np.mean([o.area for o in easy_objects]) > 3 * np.mean([o.area for o in hard_objects])


def test_class_map_marks_object_pixels(scenes: list[Scene]) -> None:
    scene = next(s for s in scenes if len({o.kind for o in s.objects}) >= 3)
    class_map = scene.class_map()
    for index, obj in enumerate(scene.objects):
        assert (class_map[_mask(scene, index)] == 1 + OBJECT_CLASSES.index(obj.kind)).all()
    assert (class_map[scene.instances == 0] == 0).all()


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        render_scene(0, difficulty=1.5)
    with pytest.raises(ValueError, match="scene class"):
        render_scene(0, scene_class="desert")


def _scene(objects: list[SceneObject], scene_class: str = "river") -> Scene:
    return Scene(
        image=np.zeros((SIZE, SIZE, 3), dtype=np.uint8),
        scene_class=scene_class,
        land_cover="farmland",
        water_body="river" if scene_class == "river" else None,
        water=np.zeros((SIZE, SIZE), dtype=bool),
        instances=np.zeros((SIZE, SIZE), dtype=np.int16),
        objects=tuple(objects),
        difficulty=0.5,
    )


def _object(kind: str, box: tuple[int, int, int, int], colour: str = "red") -> SceneObject:
    x1, y1, x2, y2 = box
    return SceneObject(kind, box, colour, (200, 50, 50), (x2 - x1) * (y2 - y1))


def test_caption_names_land_cover_water_and_counts() -> None:
    buildings = [_object("building", (10 + 40 * i, 10, 30 + 40 * i, 30)) for i in range(3)]
    assert caption(_scene(buildings)) == (
        "an aerial image of farmland with a river and three buildings"
    )
    mixed = [*buildings, _object("aircraft", (200, 200, 240, 240))]
    assert caption(_scene(mixed, "airport")) == (
        "an aerial image of an airport with three buildings and an aircraft"
    )
    many = [_object("vehicle", (5 * i, 300, 5 * i + 4, 304)) for i in range(12)]
    assert caption(_scene(many, "residential")) == (
        "an aerial image of a residential area with many vehicles"
    )
    assert caption(_scene([], "forest")) == "an aerial image of a dense forest"


def test_refer_expressions_pick_out_one_object() -> None:
    left = _object("vehicle", (10, 200, 30, 210), "white")
    right = _object("vehicle", (400, 210, 440, 230), "white")
    ship = _object("ship", (200, 50, 260, 70), "gray")
    found = dict(refer_expressions(_scene([left, right, ship])))
    assert found["the vehicle on the left"] == left
    assert found["the vehicle on the right"] == right
    assert found["the largest vehicle"] == right
    assert found["the smallest vehicle"] == left
    assert found["the ship"] == ship
    assert found["the gray ship"] == ship
    # Same colour, same row: neither "the white vehicle" nor a top/bottom one is unique.
    assert not any(text.startswith("the white vehicle") for text in found)
    assert "the vehicle at the top" not in found


def test_refer_answers_parse_back_to_the_object_box(scenes: list[Scene]) -> None:
    asked = 0
    for scene in scenes:
        answers = {s.instruction: s.answer for s in make_samples(scene) if s.kind == "refer"}
        for text, obj in refer_expressions(scene):
            assert parse_boxes(answers[prompts.refer(text)]) == [obj.model_box(SIZE, SIZE)]
            asked += 1
    assert asked > 30


def test_detection_answers_parse_back_to_every_box_of_the_class(scenes: list[Scene]) -> None:
    for scene in scenes:
        samples = {s.instruction: s.answer for s in make_samples(scene) if s.kind == "detection"}
        for kind in OBJECT_CLASSES:
            truth = sorted((o.model_box(SIZE, SIZE) for o in scene.of_kind(kind)), key=str)
            answer = samples.get(prompts.detection(kind))
            if not truth or len(truth) > MAX_DETECTION_BOXES:
                assert answer is None
                continue
            assert answer.startswith(f"<p>{kind}</p> ")
            pairs = parse_detection(answer, "?")
            assert {phrase for phrase, _ in pairs} == {kind}
            assert sorted((box for _, box in pairs), key=str) == truth


def test_presence_and_counts_agree_with_the_objects(scenes: list[Scene]) -> None:
    for scene in scenes:
        samples = make_samples(scene)
        answers = {s.instruction: s.answer for s in samples}
        for kind in OBJECT_CLASSES:
            article = "an" if kind == "aircraft" else "a"
            present = answers[prompts.vqa(f"Is there {article} {kind} in the image?")]
            assert present == ("yes" if scene.of_kind(kind) else "no")
        assert answers[prompts.vqa("Is there any water in the image?")] == (
            "yes" if scene.water.any() else "no"
        )
        counts = [s for s in samples if s.kind == "count"]
        assert sorted(int(s.answer) for s in counts) == sorted(
            n for kind in OBJECT_CLASSES if (n := len(scene.of_kind(kind)))
        )
        assert answers[prompts.classify(SCENE_CLASSES)] == scene.scene_class


def test_samples_use_skyeyegpt_prompts(scenes: list[Scene]) -> None:
    samples = make_samples(scenes[4])
    assert {s.kind for s in samples} >= {"caption", "presence", "scene"}
    assert samples[0].instruction == prompts.caption()
    for sample in samples:
        assert sample.image is scenes[4].image
        tag = {"caption": "[caption]", "refer": "[refer]", "detection": "[detection]"}
        assert sample.instruction.startswith(tag.get(sample.kind, "[vqa]"))


def test_held_out_seeds_never_meet_training_seeds() -> None:
    seeds = held_out_scene_seeds(5, seed=0)
    assert min(seeds) >= EVAL_SEED_BASE >= TRAINING_SEED_LIMIT
    assert not set(seeds) & set(held_out_scene_seeds(5, seed=1))
    first, second = list(held_out_scenes(3, seed=7)), list(held_out_scenes(3, seed=7))
    assert [s.image.tobytes() for s in first] == [s.image.tobytes() for s in second]
    assert [s.difficulty for s in first] == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        held_out_scene_seeds(2, seed=-1)


def test_the_shipped_world_scene_is_the_held_out_render() -> None:
    """The demo's world scene is a file so the runtime never imports the lab; it must still be
    exactly what the lab renders for held-out seed 3 at difficulty 0.3."""
    shipped = np.asarray(Image.open(world_scene()).convert("RGB"))
    rendered = render_scene(held_out_scene_seeds(1, 3)[0], difficulty=0.3).image
    assert shipped.shape == rendered.shape
    assert np.array_equal(shipped, rendered)
