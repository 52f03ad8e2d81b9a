"""The Helm chart (infra/k8s/aiaas) against the code it deploys.

`helm lint` and `helm template` run with the chart's defaults and with a production-shaped example (exactly-once,
GPU, SASL over TLS); the rendered manifests are then read back and checked against the real settings classes: every
AIAAS_* variable is a field of the class its prefix names and the values validate, the probes hit /healthz and
/readyz on the port the service is told to serve, a pod outlives its drain, KEDA watches the consumer group the
service joins, never asks for more replicas than partitions, and so on. Helm itself is built from the Go module
proxy by infra/k8s/helm.sh (minutes the first time, then cached outside the repository).
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from aiaas.contract.topics import ModelTopics
from aiaas.model_types import model_type, names
from aiaas.settings import EnvelopeSettings, HomeSettings, KafkaSettings
from aiaas.training.settings import TrainerSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HELM_SH = ROOT / "infra" / "k8s" / "helm.sh"
CHART = ROOT / "infra" / "k8s" / "aiaas"
EXAMPLE = ROOT / "infra" / "k8s" / "examples" / "exactly-once-gpu-sasl.yaml"
RELEASE = "aiaas"
POD_NAME = "pod-name"  # what the downward API's metadata.name stands for when a pod's settings are built
SECRET_VALUES = {"username": "aiaas-user", "password": "secret", "ca.crt": "/dev/null"}


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary infra/k8s/helm.sh builds (once per machine); skips only when it cannot be built."""
    try:
        built = subprocess.run([str(HELM_SH), "fetch"], capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"helm could not be built by infra/k8s/helm.sh fetch: {exc}")
    if built.returncode != 0:
        pytest.skip(f"helm could not be built by infra/k8s/helm.sh fetch (needs Go and the Go module proxy):\n"
                    f"{built.stderr[-3000:]}")
    return built.stdout.strip().splitlines()[-1]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, *values: str, ok: bool = True) -> list[dict[str, Any]]:
    """`helm template` of the chart with these values files / --set flags; its documents."""
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", "aiaas", *values)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# -- reading the rendered manifests ------------------------------------------------------------------------------


@dataclass
class Rendered:
    """The documents of one `helm template`, looked up by kind and name."""

    docs: list[dict[str, Any]]
    values: dict[str, Any] = field(default_factory=dict)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
        return found[0]

    def workloads(self, component: str) -> list[dict[str, Any]]:
        """Deployments and StatefulSets of one component (`service` or `trainer`)."""
        return [d for d in self.of("Deployment") + self.of("StatefulSet")
                if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for doc in self.of("Deployment") + self.of("StatefulSet") + self.of("Job"):
            yield f"{doc['kind']} {doc['metadata']['name']}", doc["spec"]["template"]["spec"]

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        """A container's environment as the process sees it (envFrom first, then env; references resolved)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env |= self.get("ConfigMap", source["configMapRef"]["name"])["data"]
        for entry in container.get("env", []):
            env[entry["name"]] = self._value(entry)
        return env

    def _value(self, entry: dict[str, Any]) -> str:
        if "value" in entry:
            assert isinstance(entry["value"], str), f"{entry['name']}: env values must be strings"
            return entry["value"]
        ref = entry["valueFrom"]
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name", entry
            return POD_NAME
        secret = ref["secretKeyRef"]
        made = [s for s in self.of("Secret") if s["metadata"]["name"] == secret["name"]]
        if made:
            return made[0]["stringData"][secret["key"]]
        assert secret["name"] in self.given_secrets(), f"{entry['name']}: Secret {secret['name']} is neither " \
            "rendered nor named in the values"
        return SECRET_VALUES[secret["key"]]

    def given_secrets(self) -> set[str]:
        """The SASL Secrets the values name (kafka.sasl.existingSecret, each model's and trainer's kafkaSecret)."""
        names = {self.values.get("kafka", {}).get("sasl", {}).get("existingSecret")}
        for entry in self.values.get("models", {}).values():
            names |= {entry.get("kafkaSecret"), entry.get("trainer", {}).get("kafkaSecret")}
        return {name for name in names if name}


def settings_classes() -> dict[str, type[BaseSettings]]:
    """Every settings class a pod's AIAAS_* variables may belong to, by environment prefix."""
    classes: list[type[BaseSettings]] = [KafkaSettings, EnvelopeSettings, HomeSettings, TrainerSettings]
    classes += [model_type(name).settings() for name in names()]
    return {cls.model_config["env_prefix"]: cls for cls in classes}


def owner(variable: str) -> tuple[str, type[BaseSettings]]:
    """The settings class (longest prefix) that reads `variable`; fails when none has it as a field."""
    classes = settings_classes()
    prefix = max((p for p in classes if variable.startswith(p)), key=len)
    cls = classes[prefix]
    assert variable[len(prefix):].lower() in cls.model_fields, (
        f"{variable}: no field {variable[len(prefix):].lower()!r} in {cls.__name__} (prefix {prefix})")
    return prefix, cls


@pytest.fixture
def settings_of(monkeypatch: pytest.MonkeyPatch):
    """Build a settings class from a pod's environment, as the process in it would (nothing else of ours set)."""

    def build(cls: type[BaseSettings], env: dict[str, str]) -> Any:
        with monkeypatch.context() as patch:
            for name in [n for n in os.environ if n.startswith(("AIAAS_", "OTEL_"))]:
                patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            return cls()

    return build


@pytest.fixture(scope="session")
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="session")
def default(helm: str, chart_values: dict[str, Any]) -> Rendered:
    return Rendered(render(helm), chart_values)


@pytest.fixture(scope="session")
def production(helm: str) -> Rendered:
    return Rendered(render(helm, "-f", str(EXAMPLE)), yaml.safe_load(EXAMPLE.read_text()))


@pytest.fixture(params=["default", "production"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return request.getfixturevalue(request.param)


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def model_of(workload: dict[str, Any]) -> str:
    return workload["metadata"]["labels"]["aiaas.io/model"]


# -- the tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], ["-f", str(EXAMPLE)]], ids=["default", "production"])
def test_helm_lint_passes(helm: str, values: list[str]) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_aiaas_variable_is_a_settings_field_and_validates(rendered: Rendered, settings_of) -> None:
    for where, spec in rendered.pod_specs():
        for box in spec["containers"]:
            env = rendered.env(box)
            owners = {owner(name) for name in env if name.startswith("AIAAS_")}
            for _, cls in owners:  # builds each class from the pod's environment: the values validate
                settings_of(cls, env)
            assert env["AIAAS_HOME"] == box["volumeMounts"][0]["mountPath"], where
            assert {"AIAAS_KAFKA_BOOTSTRAP_SERVERS", "AIAAS_KAFKA_TOPIC_PREFIX"} <= env.keys(), where


def test_services_serve_probes_on_the_metrics_port_they_are_told(rendered: Rendered, settings_of) -> None:
    services = rendered.workloads("service")
    assert services
    for workload in services + rendered.workloads("trainer"):
        box = container(workload)
        env = rendered.env(box)
        name = model_of(workload)
        cls = TrainerSettings if box["args"][1] == "trainer" else model_type(name).settings()
        settings = settings_of(cls, env)
        ports = {p["name"]: p["containerPort"] for p in box["ports"]}
        assert ports["metrics"] == settings.metrics_port != 0
        assert settings.metrics_host == "0.0.0.0"
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            get = box[probe]["httpGet"]
            assert get["path"] == path
            assert ports.get(get["port"], get["port"]) == settings.metrics_port
        service = rendered.get("Service", workload["spec"].get("serviceName") or workload["metadata"]["name"]) \
            if box["args"][1] == "serve" else rendered.get("Service", f"{RELEASE}-trainers")
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
        assert service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def test_pods_outlive_their_drain(rendered: Rendered, settings_of) -> None:
    for workload in rendered.workloads("service"):
        settings = settings_of(model_type(model_of(workload)).settings(), rendered.env(container(workload)))
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > settings.graceful_timeout_s, workload["metadata"]["name"]
    for workload in rendered.workloads("trainer"):
        settings = settings_of(TrainerSettings, rendered.env(container(workload)))
        assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > settings.stop_grace_s


def test_each_service_has_a_disruption_budget(rendered: Rendered) -> None:
    for workload in rendered.workloads("service"):
        budget = rendered.get("PodDisruptionBudget", workload["metadata"]["name"])
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]


def test_keda_scales_the_group_the_service_joins(rendered: Rendered, settings_of) -> None:
    for workload in rendered.workloads("service"):
        env = rendered.env(container(workload))
        model = model_of(workload)
        kafka = settings_of(KafkaSettings, env)
        worker = settings_of(model_type(model).settings(), env)
        scaled = rendered.get("ScaledObject", workload["metadata"]["name"])
        assert scaled["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": workload["kind"], "name": workload["metadata"]["name"]}
        (trigger,) = scaled["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == (worker.group_id or f"{kafka.topic_prefix}.{model}")  # serving/service.py
        assert meta["bootstrapServers"] == kafka.bootstrap_servers
        assert "topic" not in meta  # every topic of the group: the shared infer topic, each tenant's, the retry topic
        assert meta["offsetResetPolicy"] == "earliest"
        assert meta["allowIdleConsumers"] == "false"
        assert 1 <= scaled["spec"]["maxReplicaCount"] <= kafka.partitions
        assert int(meta["lagThreshold"]) >= 1
        assert "replicas" not in workload["spec"]  # KEDA's HPA owns the count; an upgrade must not reset it


def test_lag_threshold_is_the_measured_throughput_times_the_drain_time(default: Rendered,
                                                                      chart_values: dict[str, Any]) -> None:
    drain_default = chart_values["keda"]["targetDrainSeconds"]
    for workload in default.workloads("service"):
        scaling = chart_values["models"][model_of(workload)]["autoscaling"]
        expected = math.ceil(scaling["throughputPerReplica"] * scaling.get("targetDrainSeconds", drain_default))
        scaled = default.get("ScaledObject", workload["metadata"]["name"])
        assert int(scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"]) == expected


def test_chart_models_are_registered_model_types(chart_values: dict[str, Any]) -> None:
    assert set(chart_values["models"]) <= set(names())


def test_exactly_once_replicas_get_stable_unique_instance_ids(production: Rendered, settings_of) -> None:
    exactly_once = [w for w in production.workloads("service")
                    if production.env(container(w)).get(f"AIAAS_{model_of(w).upper()}_DELIVERY") == "exactly-once"]
    assert {model_of(w) for w in exactly_once} == {"vision", "text"}
    transactional_ids: list[str] = []
    for workload in exactly_once:
        model = model_of(workload)
        assert workload["kind"] == "StatefulSet"  # pod names <set>-<ordinal>: the same after a restart
        box = container(workload)
        (entry,) = [e for e in box["env"] if e["name"] == f"AIAAS_{model.upper()}_INSTANCE_ID"]
        assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        env = production.env(box)
        kafka = settings_of(KafkaSettings, env)
        group = settings_of(model_type(model).settings(), env).group_id or f"{kafka.topic_prefix}.{model}"
        most = production.get("ScaledObject", workload["metadata"]["name"])["spec"]["maxReplicaCount"]
        transactional_ids += [f"{group}.{workload['metadata']['name']}-{ordinal}" for ordinal in range(most)]
    assert len(transactional_ids) == len(set(transactional_ids))
    for workload in production.workloads("service"):
        if workload not in exactly_once:
            assert workload["kind"] == "Deployment"
            assert not any(e["name"].endswith("_INSTANCE_ID") for e in container(workload).get("env", []))


def test_gpu_profile_requests_a_gpu_and_cuda(production: Rendered, settings_of) -> None:
    on_gpu = {"vision", "llm"}
    for workload in production.workloads("service"):
        box = container(workload)
        settings = settings_of(model_type(model_of(workload)).settings(), production.env(box))
        spec = workload["spec"]["template"]["spec"]
        if model_of(workload) in on_gpu:
            assert box["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert settings.execution_provider == "cuda"
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
            assert spec["nodeSelector"]
            assert box["image"].startswith("registry.example.com/aiaas-gpu:")
        else:
            assert "nvidia.com/gpu" not in box["resources"].get("limits", {})
            assert settings.execution_provider == "auto"
    llm = production.get("Deployment", f"{RELEASE}-llm")
    assert settings_of(model_type("llm").settings(), production.env(container(llm))).device == "cuda"


def test_sasl_over_tls_reaches_the_services_and_keda(production: Rendered, settings_of) -> None:
    for workload in production.workloads("service"):
        box = container(workload)
        kafka = settings_of(KafkaSettings, production.env(box))
        assert kafka.security_protocol == "SASL_SSL"
        assert kafka.sasl_mechanism == "SCRAM-SHA-512"
        assert kafka.ssl_cafile and kafka.sasl_username
        (trigger,) = production.get("ScaledObject", workload["metadata"]["name"])["spec"]["triggers"]
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["metadata"]["tls"] == "enable"
        auth = production.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
        refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        assert refs.keys() == {"username", "password", "ca"}
        user = next(e for e in box["env"] if e["name"] == "AIAAS_KAFKA_SASL_USERNAME")["valueFrom"]["secretKeyRef"]
        assert refs["username"]["name"] == user["name"]  # KEDA logs in as the service's own user


def test_default_is_plaintext_without_secrets_and_keda_auth(default: Rendered) -> None:
    assert not default.of("Secret")
    assert not default.of("TriggerAuthentication")
    assert default.get("ConfigMap", f"{RELEASE}-env")["data"]["AIAAS_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"


def test_without_keda_the_workloads_hold_their_replicas(helm: str) -> None:
    rendered = Rendered(render(helm, "--set", "keda.enabled=false", "--set", "models.vision.replicas=4"))
    assert not rendered.of("ScaledObject")
    assert rendered.get("Deployment", f"{RELEASE}-vision")["spec"]["replicas"] == 4


def test_a_type_that_scales_from_zero_also_counts_its_infer_topics_before_any_commit(helm: str, settings_of) -> None:
    # A group that never committed has no topics the group-wide trigger sees (KEDA reads lag 0): the second trigger
    # names the infer topic (and the next its urgent lane), where a partition without a committed offset counts all its
    # records.
    rendered = Rendered(render(helm, "--set", "models.vision.autoscaling.minReplicas=0"))
    workload = rendered.get("Deployment", f"{RELEASE}-vision")
    kafka = settings_of(KafkaSettings, rendered.env(container(workload)))
    scaled = rendered.get("ScaledObject", f"{RELEASE}-vision")
    group_wide, infer_topic, urgent_topic = scaled["spec"]["triggers"]
    assert scaled["spec"]["minReplicaCount"] == 0 and "topic" not in group_wide["metadata"]
    topics = ModelTopics.of("vision", kafka.topic_prefix)
    assert infer_topic["metadata"] == group_wide["metadata"] | {"topic": topics.infer}
    assert urgent_topic["metadata"] == group_wide["metadata"] | {"topic": topics.urgent}
    assert infer_topic["metadata"]["offsetResetPolicy"] == "earliest"
    (others,) = rendered.get("ScaledObject", f"{RELEASE}-text")["spec"]["triggers"]  # minReplicas 1: one trigger
    assert "topic" not in others["metadata"]


def test_chart_refuses_more_replicas_than_partitions(helm: str) -> None:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", "kafka.partitions=6",
                    "--set", "models.vision.autoscaling.maxReplicas=7")
    assert done.returncode != 0
    assert "above its partitions" in done.stderr


def test_chart_refuses_settings_it_sets_itself(helm: str) -> None:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", "models.text.settings.delivery=exactly-once")
    assert done.returncode != 0
    assert "the chart sets it" in done.stderr


def test_chart_refuses_a_misspelt_value(helm: str) -> None:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", "models.vision.autoscalling.maxReplicas=3")
    assert done.returncode != 0
    assert "autoscalling" in done.stderr  # values.schema.json: a typo is an error, not a default silently kept


def test_registry_job_builds_each_enabled_model_type_once(rendered: Rendered) -> None:
    (job,) = rendered.of("Job")
    script = container(job)["args"][0]
    enabled = sorted(model_of(w) for w in rendered.workloads("service"))
    assert f"for model in {' '.join(enabled)}; do" in script
    assert 'aiaas models show "$model" production' in script and 'aiaas models build "$model"' in script
    assert all(m in names() for m in enabled)
