"""The encoder deployment's batching logic, without a cluster."""

import numpy as np
import torch

from skyeye.services.inference import encode_requests


class _CountingEncoder:
    """Stands in for VisionEncoder: one (256, 4) embedding per image, filled with its mean."""

    def __init__(self) -> None:
        self.passes: list[int] = []

    def encode(self, images: list[np.ndarray]) -> torch.Tensor:
        self.passes.append(len(images))
        return torch.stack([torch.full((256, 4), float(i.mean())) for i in images])


def _images(*values: int) -> list[np.ndarray]:
    return [np.full((8, 8, 3), v, dtype=np.uint8) for v in values]


def test_requests_get_their_own_frames_back_in_order() -> None:
    encoder = _CountingEncoder()
    requests = [_images(1), _images(2, 3, 4, 5, 6), _images(7)]
    out = encode_requests(encoder, requests, max_images=3)  # type: ignore[arg-type]
    assert encoder.passes == [3, 3, 1]  # never more than max_images in one forward pass
    assert [e.shape[0] for e in out] == [1, 5, 1]
    assert [e[:, 0, 0].tolist() for e in out] == [[1.0], [2.0, 3.0, 4.0, 5.0, 6.0], [7.0]]


def test_a_batch_that_fits_is_one_pass() -> None:
    encoder = _CountingEncoder()
    encode_requests(encoder, [_images(1), _images(2)], max_images=4)  # type: ignore[arg-type]
    assert encoder.passes == [2]
