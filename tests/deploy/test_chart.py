"""The Helm chart: strict lint, Kubernetes schema validation, and what every pod must carry."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from skyeye.settings import Settings

from .conftest import (
    CHART,
    KUBERNETES_VERSION,
    RELEASE,
    is_setting,
    named,
    of_kind,
    pod_specs,
    production_values,
    render,
)

# custom resources: Kubernetes' schemas do not know them (the RayService has its own test)
CUSTOM_KINDS = {"RayService", "ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
CPU_SERVICES = ["planner", "worker", "relay", "webhooks", "reconciler"]
# what the chart's Secret holds, and an existing Secret must (docs/deploy.md)
SECRET_KEYS = (
    "SKYEYE_S3_ACCESS_KEY",
    "SKYEYE_S3_SECRET_KEY",
    "SKYEYE_DATABASE_URL",
    "SKYEYE_KAFKA_SASL_USERNAME",
    "SKYEYE_KAFKA_SASL_PASSWORD",
)


@pytest.mark.parametrize("values", ["default", "production"])
def test_lint_strict_has_no_warning(values: str) -> None:
    report = helm.lint(
        CHART,
        production_values() if values == "production" else None,
        strict=True,
        kube_version=f"v{KUBERNETES_VERSION}",
    )
    # severity 1 is informational ("icon is recommended"); 2 warning, 3 error
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == []


def test_every_manifest_is_valid_kubernetes(manifests: list[dict[str, Any]]) -> None:
    checked = 0
    for manifest in manifests:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 15


def test_custom_resources_are_the_expected_ones(
    default_manifests: list[dict[str, Any]], production_manifests: list[dict[str, Any]]
) -> None:
    def custom(ms: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(m["apiVersion"], m["kind"]) for m in ms if m["kind"] in CUSTOM_KINDS}

    assert custom(default_manifests) == {("ray.io/v1", "RayService")}
    assert custom(production_manifests) == {
        ("ray.io/v1", "RayService"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    }


def test_every_pod_is_hardened_and_sized(manifests: list[dict[str, Any]]) -> None:
    for where, spec in pod_specs(manifests):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where
            # a read-only root needs a writable /tmp (SKYEYE_HOME, caches, Ray's sessions)
            assert "/tmp" in {v["mountPath"] for v in container["volumeMounts"]}, where


def test_services_run_their_module_with_health_probes(manifests: list[dict[str, Any]]) -> None:
    for name in [*CPU_SERVICES, "api"]:
        deployment = named(manifests, "Deployment", f"{RELEASE}-{name}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", f"skyeye.services.{name}"]
        port = "http" if name == "api" else "metrics"
        assert port in {p["name"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_each_service_has_a_disruption_budget(manifests: list[dict[str, Any]]) -> None:
    budgets = {p["metadata"]["name"]: p["spec"] for p in of_kind(manifests, "PodDisruptionBudget")}
    for deployment in of_kind(manifests, "Deployment"):
        budget = budgets[deployment["metadata"]["name"]]
        assert budget["selector"] == deployment["spec"]["selector"]
        assert budget["maxUnavailable"] == 1


def test_migrations_run_before_install_and_upgrade(manifests: list[dict[str, Any]]) -> None:
    job = named(manifests, "Job", f"{RELEASE}-migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["skyeye", "db", "migrate"]
    secret = next(e for e in container["env"] if e["name"] == "SKYEYE_DATABASE_URL")
    secret_name = secret["valueFrom"]["secretKeyRef"]["name"]
    existing = {s["metadata"]["name"]: s for s in of_kind(manifests, "Secret")}
    if secret_name in existing:
        # the hook Secret must exist before the Job: a hook itself, with a lower weight
        annotations = existing[secret_name]["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert int(annotations["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"]
        )
    else:
        assert secret_name == production_values()["secrets"]["existingSecret"]


def test_minio_job_wires_put_events_of_the_bucket_to_the_events_topic(
    manifests: list[dict[str, Any]],
) -> None:
    defaults = Settings()
    job = named(manifests, "Job", f"{RELEASE}-minio-events")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert f'topic="{defaults.topic_events}"' in script
    assert (
        f'mc event add "skyeye/{defaults.bucket}" "arn:minio:sqs::primary:kafka" --event put'
        in script
    )
    assert 'mc admin config set skyeye "notify_kafka:primary"' in script


def test_sasl_ssl_reaches_minio_keda_and_the_services(
    production_manifests: list[dict[str, Any]],
) -> None:
    script = named(production_manifests, "Job", f"{RELEASE}-minio-events")["spec"]["template"][
        "spec"
    ]["containers"][0]["args"][0]
    assert 'tls=on sasl=on sasl_mechanism="sha512"' in script
    trigger = named(production_manifests, "ScaledObject", f"{RELEASE}-worker")["spec"]["triggers"]
    assert trigger[0]["metadata"]["sasl"] == "scram_sha512"
    assert trigger[0]["metadata"]["tls"] == "enable"
    data = named(production_manifests, "ConfigMap", RELEASE)["data"]
    assert data["SKYEYE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["SKYEYE_KAFKA_SSL_CAFILE"] == "/etc/skyeye/kafka-ca/ca.crt"


def test_keda_scales_the_worker_on_its_group_lag(
    production_manifests: list[dict[str, Any]],
) -> None:
    scaled = named(production_manifests, "ScaledObject", f"{RELEASE}-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-worker"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == Settings().worker_group
    assert trigger["metadata"]["topic"] == Settings().topic_work
    # KEDA owns the replica count: the Deployment must not fight it
    assert "replicas" not in named(production_manifests, "Deployment", f"{RELEASE}-worker")["spec"]


def test_credentials_from_values_or_an_existing_secret(
    default_manifests: list[dict[str, Any]], production_manifests: list[dict[str, Any]]
) -> None:
    secret = named(default_manifests, "Secret", RELEASE)
    assert set(secret["stringData"]) == {
        "SKYEYE_S3_ACCESS_KEY",
        "SKYEYE_S3_SECRET_KEY",
        "SKYEYE_DATABASE_URL",
    }
    assert secret["stringData"]["SKYEYE_DATABASE_URL"].startswith("postgresql+psycopg2://")
    assert RELEASE not in {s["metadata"]["name"] for s in of_kind(production_manifests, "Secret")}
    api = named(production_manifests, "Deployment", f"{RELEASE}-api")
    refs = api["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "skyeye-credentials"}} in refs


def test_database_url_from_parts_escapes_and_carries_tls() -> None:
    secret = named(
        render(
            {
                "postgres": {
                    "password": "p@ss/word",
                    "sslmode": "verify-full",
                    "caSecret": "pg-ca",
                }
            }
        ),
        "Secret",
        RELEASE,
    )
    url = secret["stringData"]["SKYEYE_DATABASE_URL"]
    assert ":p%40ss%2Fword@" in url
    assert url.endswith("?sslmode=verify-full&sslrootcert=/etc/skyeye/postgres-ca/ca.crt")


def test_configmap_names_only_real_settings(manifests: list[dict[str, Any]]) -> None:
    data = named(manifests, "ConfigMap", RELEASE)["data"]
    unknown = sorted(k for k in data if k.startswith("SKYEYE_") and not is_setting(k))
    assert unknown == []


def test_configmap_settings_parse(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = named(manifests, "ConfigMap", RELEASE)["data"]
    made = [m for m in of_kind(manifests, "Secret") if m["metadata"]["name"] == RELEASE]
    # the containers read the credentials from the Secret beside the ConfigMap: the chart's,
    # or (secrets.existingSecret) one made by the operator, holding the same keys
    credentials = made[0]["stringData"] if made else dict.fromkeys(SECRET_KEYS, "from-secret")
    for key, value in {**data, **credentials}.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.s3_endpoint == data["SKYEYE_S3_ENDPOINT"]
    assert settings.ray_address is not None and settings.ray_address.startswith("ray://")
    assert settings.api.host == "0.0.0.0"
    assert settings.observability.host == "0.0.0.0"
    assert settings.observability.port == 9464


def test_model_from_an_object_store_path() -> None:
    manifests = render(
        {"model": {"source": "objectStore", "name": "skyeye-7b", "objectStore": {"path": "m/7b/"}}}
    )
    ray = of_kind(manifests, "RayService")[0]["spec"]["rayClusterConfig"]
    for group in [ray["headGroupSpec"], *ray["workerGroupSpecs"]]:
        (init,) = group["template"]["spec"]["initContainers"]
        assert 'mc mirror --overwrite "src/m/7b/" "/models/skyeye-7b/"' in init["args"][0]
    assert named(manifests, "ConfigMap", RELEASE)["data"]["SKYEYE_MODEL_DIR"] == "/models/skyeye-7b"
    for manifest in manifests:
        if manifest["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_model_from_a_pvc(production_manifests: list[dict[str, Any]]) -> None:
    ray = of_kind(production_manifests, "RayService")[0]["spec"]["rayClusterConfig"]
    worker = ray["workerGroupSpecs"][0]["template"]["spec"]
    volume = next(v for v in worker["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "skyeye-models", "readOnly": True}
    mount = next(m for m in worker["containers"][0]["volumeMounts"] if m["name"] == "model")
    assert mount == {
        "name": "model",
        "mountPath": "/models/skyeye-7b",
        "subPath": "skyeye-7b",
        "readOnly": True,
    }


def test_network_policies_and_service_monitor_name_real_ports(
    production_manifests: list[dict[str, Any]],
) -> None:
    policies = of_kind(production_manifests, "NetworkPolicy")
    assert {p["metadata"]["name"] for p in policies} == {
        f"{RELEASE}-default-deny",
        f"{RELEASE}-metrics",
        f"{RELEASE}-api",
        f"{RELEASE}-ray",
    }
    service_ports = {
        p["name"] for s in of_kind(production_manifests, "Service") for p in s["spec"]["ports"]
    }
    monitor = of_kind(production_manifests, "ServiceMonitor")[0]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
