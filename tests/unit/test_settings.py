import pytest
from pydantic import ValidationError

from skyeye.settings import PACKAGED_MODEL, DeploymentSettings, Settings, invalid_settings


def test_defaults_point_at_the_embedded_stack(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SKYEYE_HOME", str(tmp_path))
    settings = Settings()
    assert settings.home == tmp_path
    assert settings.s3_endpoint is None and settings.kafka_bootstrap is None
    assert settings.resolved_model_dir == PACKAGED_MODEL


def test_an_empty_variable_means_unset(monkeypatch) -> None:
    monkeypatch.setenv("SKYEYE_MODEL_DIR", "")
    monkeypatch.setenv("SKYEYE_KAFKA_BOOTSTRAP", "")
    settings = Settings()
    assert settings.resolved_model_dir == PACKAGED_MODEL
    assert settings.kafka_bootstrap is None


def test_nested_environment_overrides(monkeypatch) -> None:
    monkeypatch.setenv("SKYEYE_ENCODER__MAX_REPLICAS", "3")
    monkeypatch.setenv("SKYEYE_GROUNDING_PHRASES", '["ship", "harbour"]')
    settings = Settings()
    assert settings.encoder.max_replicas == 3
    assert settings.grounding_phrases == ["ship", "harbour"]


def test_replica_bounds_are_checked() -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        DeploymentSettings(min_replicas=3, max_replicas=2)


def test_oversize_question_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_question_chars"):
        Settings(vqa_questions=["why " * 200], max_question_chars=100)


def test_blank_phrase_is_refused() -> None:
    with pytest.raises(ValidationError, match="blank"):
        Settings(grounding_phrases=["ship", "  "])


def test_as_env_round_trips_through_the_environment(monkeypatch, tmp_path) -> None:
    original = Settings(
        home=tmp_path,
        s3_endpoint="127.0.0.1:9",
        grounding_phrases=["ship"],
        encoder=DeploymentSettings(max_replicas=2, num_gpus=1),
        s3_secret_key="s3cr3t",
    )
    for name, value in original.as_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_invalid_settings_name_each_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYEYE_DECODING__STEPS", "bogus")
    monkeypatch.setenv("SKYEYE_ENCODER__MIN_REPLICAS", "x")
    with pytest.raises(ValidationError) as failed:
        Settings()
    said = invalid_settings(failed.value)
    assert said is not None
    assert "SKYEYE_DECODING__STEPS='bogus': Input should be 'eager', 'static' or 'compiled'" in said
    assert "SKYEYE_ENCODER__MIN_REPLICAS='x'" in said
    # another model's error is not the settings'
    with pytest.raises(ValidationError) as other:
        DeploymentSettings(min_replicas=-1)
    assert invalid_settings(other.value) is None
