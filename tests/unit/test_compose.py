"""compose.yaml cannot run here (no Docker engine); check that it parses and wires every service."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_parses_and_names_every_service():
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    for model in ("vision", "text", "recsys"):
        assert {model, f"{model}-build"} <= set(services)
        assert services[model]["command"] == ["aiaas", "serve", model]
    for model in ("vision", "text", "recsys"):
        assert services[f"{model}-trainer"]["command"] == ["python", "-m", "aiaas.training", model]
    pinned = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", (ROOT / "infra/kafka/pom.xml").read_text())[1]
    assert services["kafka"]["image"] == f"apache/kafka:{pinned}"  # the broker the suite tests against
    assert services["vision"]["environment"]["AIAAS_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert services["vision"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://jaeger:")
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    assert (ROOT / "Dockerfile").exists()


def test_compose_prometheus_scrapes_the_metrics_port_every_service_and_trainer_is_given():
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services, env = doc["services"], doc["x-aiaas-env"]
    config = yaml.safe_load((ROOT / "infra" / "observe" / "prometheus-compose.yml").read_text())
    targets = {t for group in config["scrape_configs"][0]["static_configs"] for t in group["targets"]}
    for model in ("vision", "text", "recsys"):
        port = env[f"AIAAS_{model.upper()}_METRICS_PORT"]
        assert env[f"AIAAS_{model.upper()}_METRICS_HOST"] == "0.0.0.0"
        assert {f"{model}:{port}", f"{model}-trainer:{env['AIAAS_TRAINER_METRICS_PORT']}"} <= targets
    assert all(target.split(":")[0] in services for target in targets)
