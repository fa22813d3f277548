"""The RayService: KubeRay v1.4's schema, pod templates Kubernetes accepts, and a Serve config
whose import path and args the application really takes."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from skyeye.settings import Settings

from .conftest import KUBERNETES_VERSION, RELEASE, ROOT, named, of_kind

SCHEMA = Path(__file__).parent / "schemas" / "rayservice-kuberay-v1.4.json"


def rayservice(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = of_kind(manifests, "RayService")
    return found


def serve_app(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    config = yaml.safe_load(rayservice(manifests)["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    return app


def test_matches_the_kuberay_v1_4_schema(manifests: list[dict[str, Any]]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(rayservice(manifests))


def test_pod_templates_are_valid_kubernetes(manifests: list[dict[str, Any]]) -> None:
    cluster = rayservice(manifests)["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        # a PodTemplate object carries a PodTemplateSpec, as the CRD's `template` field does
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": group["template"],
        }
        kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


def test_serve_config_imports_the_real_application_builder(
    manifests: list[dict[str, Any]],
) -> None:
    app = serve_app(manifests)
    module, _, attribute = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attribute)
    assert callable(builder)
    assert app["name"] == Settings().serve_app


def test_serve_args_are_settings(manifests: list[dict[str, Any]]) -> None:
    args = serve_app(manifests)["args"]
    settings = Settings(**args)  # pydantic refuses a wrong type or min > max replicas
    assert set(args) <= set(Settings.model_fields)
    for stage in ("encoder", "decoder", "embedder"):
        assert set(args[stage]) <= set(type(getattr(settings, stage)).model_fields)


def test_production_serve_args_follow_the_values(
    production_manifests: list[dict[str, Any]],
) -> None:
    settings = Settings(**serve_app(production_manifests)["args"])
    assert settings.device == "cuda"
    assert settings.encoder.autoscaling_config() == {
        "min_replicas": 2,
        "max_replicas": 8,
        "target_ongoing_requests": 2,
    }
    assert (settings.encoder.max_batch_size, settings.encoder.num_gpus) == (16, 0.5)
    assert settings.decoder.batch_wait_timeout_s == 0.05
    # an autoscaling delay set in values reaches Serve; unset ones stay Serve's defaults
    assert settings.decoder.autoscaling_config()["downscale_delay_s"] == 900
    assert "downscale_delay_s" not in settings.encoder.autoscaling_config()
    # the model folder the Ray pods load is the one the CPU services name in results
    data = named(production_manifests, "ConfigMap", RELEASE)["data"]
    assert str(settings.model_dir) == data["SKYEYE_MODEL_DIR"]


def test_gpu_stages_fit_one_worker_pod(manifests: list[dict[str, Any]]) -> None:
    args = serve_app(manifests)["args"]
    worker = rayservice(manifests)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    (container,) = worker["template"]["spec"]["containers"]
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1
    for stage in ("encoder", "decoder"):
        assert 0 < args[stage]["num_gpus"] <= gpus
    assert worker["template"]["spec"]["tolerations"]
    assert worker["template"]["spec"]["nodeSelector"]


def test_ray_version_is_the_pinned_one(manifests: list[dict[str, Any]]) -> None:
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned is not None
    version = pinned.group(1)
    assert rayservice(manifests)["spec"]["rayClusterConfig"]["rayVersion"] == version
    dockerfile = (ROOT / "docker" / "ray.Dockerfile").read_text()
    assert f"ARG RAY_VERSION={version}\n" in dockerfile


def test_services_join_the_head_service_kuberay_makes(manifests: list[dict[str, Any]]) -> None:
    service = rayservice(manifests)
    data = named(manifests, "ConfigMap", RELEASE)["data"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    client_port = next(p for p in head["containers"][0]["ports"] if p["name"] == "client")
    expected = f"ray://{service['metadata']['name']}-head-svc:{client_port['containerPort']}"
    assert data["SKYEYE_RAY_ADDRESS"] == expected
