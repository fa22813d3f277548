"""The tiny model's tokenizer: a fixed Unigram vocabulary with byte fallback, Llama-2 conventions.

It mirrors what the code relies on in Llama-2's tokenizer: ids 0/1/2 are ``<unk>``/``<s>``/``</s>``,
ids 3-258 are the byte pieces ``<0x00>``-``<0xFF>`` (so any text is representable), words carry a
leading ``▁`` for a preceding space, BOS is added by the post-processor. Every MiniGPT-v2 markup
token, box coordinate and common aerial-caption word is a single piece, so a model trained on it
spends one position per word. The pieces are a pure function of this file: no training, no
randomness, the same tokenizer.json on every machine.
"""

from __future__ import annotations

from functools import cache

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import PreTrainedTokenizerFast

__all__ = [
    "BOS",
    "EOS",
    "NUMBER_TOKENS",
    "PAD",
    "UNK",
    "tiny_tokenizer",
    "tiny_vocabulary",
]

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPACE = "▁"
# The 0-100 box scale, one token per value.
NUMBER_TOKENS = tuple(f"<{n}>" for n in range(101))

MARKUP = (
    "[INST]",
    "[/INST]",
    "<Img>",
    "</Img>",
    "[caption]",
    "[refer]",
    "[detection]",
    "[identify]",
    "[vqa]",
    "[grounding]",
    "{",
    "}",
    "<p>",
    "</p>",
    "<delim>",
)

# Words of remote-sensing captions (UCM, Sydney, RSICD, CapERA style), grounding phrases, VQA
# questions and answers, scene classes, and the fixed prompt texts of prompts.py.
_WORD_TEXT = """
a an the this that these those there here it its is are was be been being has have had
of in on at to from by with without near next beside behind between among around along across
over under above below into through and or but not no yes some many much lots lot several few
all each every both other another more most less one two three four five six seven eight nine
ten zero first second third left right top bottom middle center centre side sides corner
edge part parts upper lower front back north south east west
image images picture photo scene view video frame frames aerial satellite remote sensing
area areas region regions place land ground field fields farmland farm farms agricultural
crop crops meadow grass grassland lawn lawns vegetation plant plants tree trees forest forests
wood woods bush bushes shrub shrubs green dark light white black gray grey brown red blue
yellow orange large small big little huge tiny long short wide narrow tall high low dense
sparse sparsely densely medium neat neatly regular irregular arranged scattered surrounded
lined located built parked moored docked crossing passing running lies lie stand stands
standing located covered full empty close closely far
building buildings house houses home homes residential apartment apartments roof roofs villa
villas block blocks district city town village urban suburban industrial commercial school
church stadium playground court courts tennis basketball baseball diamond soccer football
golf course courses pond ponds pool pools swimming lake lakes river rivers stream water sea
ocean beach beaches coast shore bay harbor harbour port island wave waves sand sandy desert
bare mountain mountains hill hills rock rocks snow cloud clouds bridge bridges road roads
street streets highway highways freeway freeways overpass overpasses intersection
intersections railway railways rail track tracks train trains station stations parking car
cars vehicle vehicles truck trucks bus buses boat boats ship ships airplane airplanes
airport airports runway runways plane planes aircraft terminal storage tank tanks
container containers chaparral mobile park parks square viaduct dam wind turbine turbines
solar panel panels factory factories warehouse warehouses path paths lane lanes line lines
circle circular round straight curved shape shaped pattern structure structures object
objects people person
describe described description briefly detail details give me location locate locations
what where which how who why when does do did can could would will
classify within given classes class category categories word phrase answer using above
count number present presence any type types kind
"""
WORDS = tuple(_WORD_TEXT.split())

CAPITALISED = (
    "A",
    "An",
    "The",
    "This",
    "There",
    "It",
    "Is",
    "Are",
    "Many",
    "Some",
    "Lots",
    "Several",
    "Two",
    "Three",
    "Yes",
    "No",
    "What",
    "Where",
    "Which",
    "How",
    "Does",
    "Do",
    "Describe",
    "Classify",
    "Answer",
)

# Every listed multi-character piece scores the same and more than any split of it into smaller
# pieces, so a listed word or markup token is never split.
_WORD_SCORE = -2.0
_CHAR_SCORE = -5.0
# Control pieces must never be produced from plain text by the Unigram lattice.
_CONTROL_SCORE = -1e9


@cache
def tiny_vocabulary() -> tuple[tuple[str, float], ...]:
    """The ordered (piece, score) list; a piece's id is its index."""
    pieces: dict[str, float] = {UNK: _CONTROL_SCORE, BOS: _CONTROL_SCORE, EOS: _CONTROL_SCORE}
    pieces.update((f"<0x{b:02X}>", _CONTROL_SCORE) for b in range(256))
    pieces[PAD] = _CONTROL_SCORE
    pieces.update((m, _WORD_SCORE) for m in MARKUP)
    pieces.update((n, _WORD_SCORE) for n in NUMBER_TOKENS)
    pieces[SPACE] = _CHAR_SCORE
    for code in range(33, 127):
        pieces.setdefault(chr(code), _CHAR_SCORE)
    for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        pieces.setdefault(SPACE + char, _CHAR_SCORE)
    # Counts are common VQA answers; whole numbers keep them one piece like the box coordinates.
    for word in (*WORDS, *CAPITALISED, *(str(n) for n in range(101))):
        pieces.setdefault(SPACE + word, _WORD_SCORE)
        pieces.setdefault(word, _WORD_SCORE)
    return tuple(pieces.items())


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer object; ``save_pretrained`` writes files that ``AutoTokenizer`` loads."""
    vocabulary = list(tiny_vocabulary())
    backend = Tokenizer(Unigram(vocabulary, unk_id=0, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPACE, prepend_scheme="first", split=True
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    bos_id = [piece for piece, _ in vocabulary].index(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (UNK, BOS, EOS, PAD)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
    )
