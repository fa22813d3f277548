"""values.schema.json: a bad value stops the install with a message naming the key and why."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from .conftest import CHART, production_values, render


def refusal(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(values)
    return str(caught.value)


def test_defaults_and_production_values_pass_the_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values({}))
        chart.validate_schema(chart.merge_values(production_values()))


def test_replicas_must_be_a_number() -> None:
    message = refusal({"serve": {"encoder": {"maxReplicas": "many"}}})
    assert "at '/serve/encoder/maxReplicas': got string, want integer" in message


def test_a_pvc_model_needs_its_claim() -> None:
    message = refusal({"model": {"source": "pvc"}})
    assert "at '/model/pvc/claimName': minLength: got 0, want 1" in message


def test_unknown_and_misspelt_keys_are_refused() -> None:
    message = refusal({"worker": {"replica": 3}})
    assert "/worker" in message and "replica" in message


def test_endpoints_are_host_and_port() -> None:
    assert "/kafka/bootstrap" in refusal({"kafka": {"bootstrap": "http://kafka:9092"}})
    assert "/s3/endpoint" in refusal({"s3": {"endpoint": "https://minio:9000"}})


def test_extra_settings_must_be_skyeye_variables() -> None:
    message = refusal({"extraSettings": {"RETRY_ATTEMPTS": "3"}})
    assert "'RETRY_ATTEMPTS' does not match pattern '^SKYEYE_[A-Z0-9_]+$'" in message
