"""The encoder deployment's batching logic, without a cluster."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from skyeye.services.inference import app_from_env, encode_requests
from skyeye.settings import Settings


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


def test_a_serve_config_builds_the_app_from_settings_its_args_override() -> None:
    """KubeRay's serveConfigV2 imports app_from_env; its args are Settings fields."""
    app = app_from_env({"decoder": {"max_replicas": 3, "num_gpus": 1}, "device": "cpu"})
    # the ingress is bound to the settings it was built from (reads a Ray-internal attribute)
    settings = app._bound_deployment.init_args[-1]
    assert isinstance(settings, Settings)
    assert (settings.decoder.max_replicas, settings.decoder.num_gpus) == (3, 1)
    with pytest.raises(ValidationError, match=r"decoder\.max_replicas"):
        app_from_env({"decoder": {"max_replicas": "many"}})
