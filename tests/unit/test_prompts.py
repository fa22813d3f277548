import subprocess
import sys

import pytest

from skyeye.model import prompts
from skyeye.model.answers import Box


def test_task_instructions_match_the_spec() -> None:
    assert prompts.caption() == "[caption] briefly describe the image"
    assert prompts.caption("describe the harbour") == "[caption] describe the harbour"
    assert prompts.video_caption() == "[caption] briefly describe the video frame image"
    assert prompts.detailed_description() == "Describe this image in detail."
    assert prompts.refer("the white ship") == "[refer] give me the location of the white ship"
    assert prompts.detection("storage tank") == "[detection] storage tank"
    assert prompts.identify(Box(1, 2, 30, 40)) == "[identify] this {<1><2><30><40>} is"
    assert prompts.vqa("Is there any water?") == "[vqa] Is there any water?"
    assert prompts.classify(["beach", "forest", "parking lot"]) == (
        "[vqa] Classify the image within one of the given classes: beach, forest, parking lot. "
        "Answer it using the above category word or phrase."
    )


def test_wrap_single_image() -> None:
    assert prompts.wrap(prompts.caption()) == (
        "[INST] <Img><ImageHere></Img> [caption] briefly describe the image [/INST]"
    )


def test_wrap_one_slot_per_frame() -> None:
    text = prompts.wrap(prompts.video_caption(), n_images=3)
    assert text.count("<Img><ImageHere></Img>") == 3
    assert text == (
        "[INST] <Img><ImageHere></Img><Img><ImageHere></Img><Img><ImageHere></Img> "
        "[caption] briefly describe the video frame image [/INST]"
    )


def test_wrap_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="n_images"):
        prompts.wrap("x", n_images=0)
    with pytest.raises(ValueError, match="ImageHere"):
        prompts.wrap("[vqa] what is <ImageHere>?")


def test_prompts_and_answers_import_without_torch() -> None:
    code = (
        "import sys, skyeye.model.prompts, skyeye.model.answers; "
        "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("instruction", "answer", "searched_by"),
    [
        # a box answer: its phrases, each once, in order; the asked phrase where none is clean
        (
            prompts.detection("vehicle"),
            "<p>car</p>{<1><2><3><4>}<p>truck</p>{<1><2><3><4>}<p>car</p>{<5><6><7><8>}",
            "car, truck",
        ),
        (prompts.detection("building"), "<p><16></p> {<30><12><51><23>}", "building"),
        (prompts.refer("the red roof"), "{<1><2><3><4>}", "the red roof"),
        # no box: the answer's own text
        (prompts.detection("ship"), "there is no ship", "there is no ship"),
        (prompts.refer("the red roof"), "<p>roof", "<p>roof"),
        (prompts.vqa("Is there water?"), "Yes, a lake", "Yes, a lake"),
        (prompts.caption(), "<p>a harbour</p>{<1><2><3><4>}", "<p>a harbour</p>{<1><2><3><4>}"),
    ],
)
def test_answers_are_searched_by_their_phrases_or_their_text(
    instruction: str, answer: str, searched_by: str
) -> None:
    assert prompts.search_text(instruction, answer) == searched_by
