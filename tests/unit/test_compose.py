"""compose.yaml cannot run here (no Docker engine); check that it parses and wires every service."""

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
    assert services["kafka"]["image"].startswith("apache/kafka:4.1")
    assert services["vision"]["environment"]["AIAAS_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert services["vision"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://jaeger:")
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    assert (ROOT / "Dockerfile").exists()
