"""infra/compose.yaml, read as data (no Docker engine here): every image, command, variable,
mounted file and dependency refers to something real."""

from __future__ import annotations

import importlib
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from skyeye.settings import Settings

from .conftest import ROOT, is_setting

INFRA = ROOT / "infra"
OUR_IMAGES = {"skyeye-services", "skyeye-ray"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def test_the_production_components_and_the_services_are_there(compose: dict[str, Any]) -> None:
    names = set(services(compose))
    assert {"minio", "kafka", "postgres", "ray-head", "migrate", "serve-deploy"} <= names
    assert {"planner", "worker", "relay", "webhooks", "reconciler", "api"} <= names


def test_images_are_built_here_or_pinned(compose: dict[str, Any]) -> None:
    built = {}
    for name, service in services(compose).items():
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: {service['image']} is not pinned"
        if "build" in service:
            dockerfile = INFRA / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), name
            built[image] = dockerfile
    # each of our images is built by exactly one service; the others reuse it
    assert set(built) == OUR_IMAGES
    for name, service in services(compose).items():
        image = service["image"].rpartition(":")[0]
        assert image in OUR_IMAGES or "build" not in service, name


def test_depends_on_names_services(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services(compose), f"{name} depends on unknown {dependency}"


def test_skyeye_variables_are_settings(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for variable in service.get("environment", {}):
            if variable.startswith("SKYEYE_"):
                assert is_setting(variable), f"{name}: {variable} is no setting"


def test_settings_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    env = services(compose)["worker"]["environment"]
    settings = Settings(
        **{
            k.removeprefix("SKYEYE_").lower(): v
            for k, v in env.items()
            if k.startswith("SKYEYE_") and "__" not in k
        }
    )
    hosts = set(services(compose))
    assert settings.s3_endpoint is not None and settings.s3_endpoint.split(":")[0] in hosts
    assert settings.kafka_bootstrap is not None and settings.kafka_bootstrap.split(":")[0] in hosts
    assert settings.ray_address == "ray://ray-head:10001"
    assert "--ray-client-server-port=10001" in services(compose)["ray-head"]["command"]
    database = urlsplit(settings.database_url or "")
    postgres = services(compose)["postgres"]["environment"]
    assert (database.hostname, database.username, database.password, database.path) == (
        "postgres",
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        f"/{postgres['POSTGRES_DB']}",
    )
    assert services(compose)["postgres"]["image"].startswith("pgvector/pgvector:")


def test_minio_notifies_the_kafka_service_of_puts_in_the_bucket(compose: dict[str, Any]) -> None:
    minio = services(compose)["minio"]["environment"]
    kafka = services(compose)["kafka"]["environment"]
    defaults = Settings()
    assert minio["MINIO_NOTIFY_KAFKA_ENABLE_PRIMARY"] == "on"
    assert minio["MINIO_NOTIFY_KAFKA_TOPIC_PRIMARY"] == defaults.topic_events
    assert f"PLAINTEXT://{minio['MINIO_NOTIFY_KAFKA_BROKERS_PRIMARY']}" in kafka[
        "KAFKA_ADVERTISED_LISTENERS"
    ].split(",")
    script = services(compose)["minio-setup"]["command"][0]
    assert (
        f"mc event add local/{defaults.bucket} arn:minio:sqs::primary:kafka --event put" in script
    )
    assert f"local/{defaults.derived_bucket}" in script


def test_kafka_runs_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = services(compose)["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka


def test_mounted_serve_config_builds_the_application(compose: dict[str, Any]) -> None:
    (volume,) = services(compose)["serve-deploy"]["volumes"]
    source, target, _ = volume.split(":")
    assert target in services(compose)["serve-deploy"]["command"]
    config = yaml.safe_load((INFRA / source).read_text())
    (app,) = config["applications"]
    module, _, attribute = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    Settings(**app["args"])
    assert app["name"] == services(compose)["worker"]["environment"]["SKYEYE_SERVE_APP"]


def test_our_containers_run_read_only(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if service["image"].startswith("skyeye-services") and name != "migrate":
            assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
    assert re.search(r"read_only: true", (INFRA / "compose.yaml").read_text())
