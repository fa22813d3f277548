from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from skyeye.model.config import ModelConfig
from skyeye.model.vocabulary import MARKUP, WORDS, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    # Through files and AutoTokenizer: the call the loader makes for any Llama folder.
    folder = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer().save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_llama_special_ids(tokenizer: PreTrainedTokenizerBase) -> None:
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id is not None
    assert len(tokenizer) == ModelConfig.tiny().llm.vocab_size


def test_bos_is_added_once(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer("[INST] <Img>").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.bos_token_id not in tokenizer("x", add_special_tokens=False).input_ids


@pytest.mark.parametrize(
    "text",
    [
        "There are many buildings and some green trees.",
        "<p>building</p> {<12><0><100><99>}<delim>{<1><2><3><4>}",
        "héllo wörld, 東京 🛰️\n\ttabs  and  double spaces",
        "Unlisted xylophone-like Zzyzx words 12345 ~`|\\",
    ],
)
def test_any_text_round_trips(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_minigpt_vocabulary_is_one_token_each(tokenizer: PreTrainedTokenizerBase) -> None:
    singles = [*MARKUP, *(f"<{n}>" for n in range(101)), *WORDS]
    for piece in singles:
        assert len(tokenizer(piece, add_special_tokens=False).input_ids) <= 2, piece
        # After a space (the usual case) a word is exactly one token, markup is "▁" + itself.
        tokens = tokenizer.tokenize(f"x {piece}")[1:]
        assert tokens in ([f"▁{piece}"], ["▁", piece]), (piece, tokens)
    box = tokenizer.tokenize("{<1><22><100><0>}")
    assert box == ["▁", "{", "<1>", "<22>", "<100>", "<0>", "}"]


def test_tokenizer_is_deterministic(tmp_path: Path) -> None:
    tiny_tokenizer().save_pretrained(tmp_path / "a")
    tiny_tokenizer().save_pretrained(tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
