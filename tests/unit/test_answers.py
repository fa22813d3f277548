import random

import pytest

from skyeye.model.answers import (
    Box,
    ParsedAnswer,
    clean_label,
    has_template_remnants,
    parse_boxes,
    parse_class,
    parse_count,
    parse_detection,
    parse_grounding,
    parse_text,
    parse_yes_no,
)


def test_box_validates_the_scale() -> None:
    assert Box(0, 0, 100, 100).x2 == 100
    assert Box(5, 5, 5, 5).y1 == 5  # degenerate boxes are still boxes
    for bad in [(-1, 0, 10, 10), (0, 0, 101, 10), (20, 0, 10, 10), (0, 20, 10, 10)]:
        with pytest.raises(ValueError, match="0-100"):
            Box(*bad)


def test_box_pixels_round_trip() -> None:
    box = Box(10, 20, 60, 80)
    assert box.to_pixels(200, 100) == (20.0, 20.0, 120.0, 80.0)
    assert Box.from_pixels(20, 20, 120, 80, 200, 100) == box
    # Truncation, as in MiniGPT-v2's data preparation.
    assert Box.from_pixels(19.9, 0, 199.9, 99.9, 200, 100) == Box(9, 0, 99, 99)
    assert str(box) == "{<10><20><60><80>}"


def test_parse_one_box() -> None:
    assert parse_boxes("{<12><34><56><78>}") == [Box(12, 34, 56, 78)]
    assert parse_boxes("the car is at {<0><0><100><100>} here") == [Box(0, 0, 100, 100)]


def test_parse_boxes_tolerates_spaces() -> None:
    assert parse_boxes("{ <1> <2><3>  <4> }") == [Box(1, 2, 3, 4)]


def test_several_boxes_with_delim() -> None:
    text = "<p>building</p> {<1><2><3><4>}<delim>{<10><20><30><40>}<delim>{<5><5><9><9>}"
    assert parse_boxes(text) == [Box(1, 2, 3, 4), Box(10, 20, 30, 40), Box(5, 5, 9, 9)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no boxes here",
        "{<1><2><3>}",
        "{<1><2><3><4>",
        "<1><2><3><4>",
        "{<1><2><3><4><5>}",
        "{<a><b><c><d>}",
        "{<1234><2><3><4>}",
        "{<-1><2><3><4>}",
        "}{<><><><>}{",
        "<p></p><delim><delim>{",
    ],
)
def test_malformed_text_gives_no_boxes(text: str) -> None:
    assert parse_boxes(text) == []
    assert parse_detection(text, "thing") == []
    assert not parse_grounding(text, "thing").parsed


def test_out_of_range_and_inverted_boxes_are_skipped() -> None:
    text = "{<1><2><300><4>}<delim>{<50><2><10><4>}<delim>{<1><60><3><4>}<delim>{<7><8><9><10>}"
    assert parse_boxes(text) == [Box(7, 8, 9, 10)]


def test_detection_pairs_phrases_with_their_boxes() -> None:
    text = "<p>building</p> {<1><2><3><4>}<delim>{<5><6><7><8>} <p>road</p> {<0><50><100><60>}"
    assert parse_detection(text, "x") == [
        ("building", Box(1, 2, 3, 4)),
        ("building", Box(5, 6, 7, 8)),
        ("road", Box(0, 50, 100, 60)),
    ]


def test_bare_boxes_take_the_default_phrase() -> None:
    assert parse_detection("{<1><2><3><4>}", "the red car") == [("the red car", Box(1, 2, 3, 4))]
    assert parse_detection("<p> </p> {<1><2><3><4>}", "ship") == [("ship", Box(1, 2, 3, 4))]
    assert parse_detection("<p>ship {<1><2><3><4>}", "boat") == [("boat", Box(1, 2, 3, 4))]


def test_parsed_answer() -> None:
    answer = parse_grounding("  <p>tank</p> {<1><2><3><4>}\n", "storage tank")
    assert answer == ParsedAnswer(
        text="<p>tank</p> {<1><2><3><4>}", boxes=(("tank", Box(1, 2, 3, 4)),)
    )
    assert answer.parsed
    failed = parse_grounding("I cannot see one", "tank")
    assert not failed.parsed and failed.boxes == () and failed.text == "I cannot see one"


def test_text_answers_are_stripped_or_unparsed() -> None:
    assert parse_text("  two white ships near a pier \n") == "two white ships near a pier"
    assert parse_text(" \n ") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("  YES, there is water", "yes"),
        ("no", "no"),
        ("No, it is not", "no"),
        ('"no"', "no"),
        ("not sure", None),
        ("nope", None),
        ("yesterday", None),
        ("there is no water", None),
        ("", None),
        ("{<1><2><3><4>}", None),
    ],
)
def test_yes_no(text: str, expected: str | None) -> None:
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("There are 12 ships.", 12),
        ("1,200", 1200),
        ("three", 3),
        ("Seventeen cars", 17),
        ("twenty-one", 21),
        ("forty two", 42),
        ("thirty", 30),
        ("zero", 0),
        ("none", 0),
        ("4 (four)", 4),
        ("between 1 and 10", None),
        ("3 ships and 2 boats", None),
        ("2.5", None),
        ("two hundred", None),
        ("hundreds of cars", None),
        ("many", None),
        ("someone", None),
        ("", None),
    ],
)
def test_count(text: str, expected: int | None) -> None:
    assert parse_count(text) == expected


CLASSES = ["beach", "dense residential", "parking lot", "bus station", "industry", "residential"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("beach", "beach"),
        ("Beach.", "beach"),
        ("beaches", "beach"),
        ("a beach", "beach"),
        ("Parking-Lot", "parking lot"),
        ("parkinglots", "parking lot"),
        ("bus stations", "bus station"),
        ("industries", "industry"),
        ("Dense residential", "dense residential"),
        ("residential", "residential"),
        ("forest", None),
        ("beach or parking lot", None),
        ("", None),
        ("...", None),
    ],
)
def test_class(text: str, expected: str | None) -> None:
    assert parse_class(text, CLASSES) == expected


def test_class_that_matches_several_keeps_the_exact_spelling() -> None:
    assert parse_class("bridges", ["bridge", "bridges"]) == "bridges"
    assert parse_class("Bridge", ["bridge", "bridges"]) == "bridge"
    assert parse_class("bridge", ["Bridge", "bridge"]) is None
    assert parse_class("beach", []) is None


def test_parsers_never_raise() -> None:
    rng = random.Random(0)
    alphabet = "{}<>0123456789,.- abcdefghijklmnopqrstuvwxyzYN\n/p"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        parse_text(text)
        parse_yes_no(text)
        parse_count(text)
        parse_class(text, CLASSES)
        parse_grounding(text, "thing")


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("ship", "ship"),
        (" storage   tank ", "storage tank"),
        ("T-72 tank", "T-72 tank"),
        ("St Mary's church", "St Mary's church"),
        ("bâtiment", "bâtiment"),
        ("<p>ship", None),
        ("<16>", None),
        ("{", None),
        ("ship}", None),
        ("[INST] ship", None),
        ("ship_1", None),
        ("16", None),
        ("- ship", None),
        ("ship.", None),
        ("", None),
        ("x" * 65, None),
    ],
)
def test_clean_labels(text: str, label: str | None) -> None:
    assert clean_label(text) == label


def test_phrases_that_are_no_clean_label_fall_back_to_the_requested_one() -> None:
    text = "<p><16></p> {<1><2><3><4>}<p>ship<p>ship</p> {<5><6><7><8>}<p>tank</p> {<1><1><2><2>}"
    assert parse_detection(text, "boat") == [
        ("boat", Box(1, 2, 3, 4)),
        ("boat", Box(5, 6, 7, 8)),
        ("tank", Box(1, 1, 2, 2)),
    ]


@pytest.mark.parametrize(
    "text",
    ["no 5 5 4 6}", "yes <16>", "a road <p>", "{<1><2><3><4>} 3", "[vqa] no", "beach [/INST]"],
)
def test_answers_with_template_remnants_are_not_parsed(text: str) -> None:
    assert has_template_remnants(text)
    assert parse_text(text) is None
    assert parse_yes_no(text) is None
    assert parse_count(text) is None
    assert parse_class(text, CLASSES) is None


@pytest.mark.parametrize(
    "text", ["No.", "yes, there is water", "There are 3 buildings.", "a road (paved) by a field"]
)
def test_clean_answers_have_no_template_remnants(text: str) -> None:
    assert not has_template_remnants(text) and parse_text(text) == text
