"""The sentence encoder of semantic search: the packaged all-MiniLM-L6-v2, pooled as configured.

sentence-transformers (installed with the model's wheel) is the reference: our plain
``transformers`` path must give its vectors.
"""

import numpy as np
import pytest

from skyeye.model.sentences import DIMENSIONS, MAX_TOKENS, SentenceEncoder, model_path

TEXTS = [
    "a river runs through a green valley",
    "several buildings stand next to a road",
    "Is there any water in the image? yes",
    "",
    "airplanes parked at the terminal of an airport " * 60,  # over 256 tokens: truncated
]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def test_vectors_match_sentence_transformers(encoder: SentenceEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_path()), device="cpu")
    assert reference.max_seq_length == MAX_TOKENS
    expected = reference.encode(TEXTS, convert_to_numpy=True)
    got = encoder.encode(TEXTS)
    assert got.shape == (len(TEXTS), DIMENSIONS) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_vectors_are_unit_length_and_batching_changes_nothing(encoder: SentenceEncoder) -> None:
    whole = encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    # padding to the longest text of a batch must not move a short text's vector
    one_by_one = np.concatenate([encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)
    assert encoder.encode([]).shape == (0, DIMENSIONS)


def test_similar_sentences_score_higher_than_unrelated_ones(encoder: SentenceEncoder) -> None:
    query, similar, unrelated = encoder.encode(
        ["a lake surrounded by forest", "a pond among trees", "cars parked in a parking lot"]
    )
    assert float(query @ similar) > float(query @ unrelated) + 0.2
