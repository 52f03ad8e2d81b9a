import subprocess
import sys

import pytest

from aiaas.cli.main import main
from aiaas.registry.store import Registry


def test_unreachable_broker_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setenv("AIAAS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["topics"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "127.0.0.1:1" in err[0] and "infra/kafka/kafka.sh start" in err[0]


def test_trace_of_an_unknown_job_says_where_it_looked(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AIAAS_HOME", str(tmp_path))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("AIAAS_TRACE_QUERY_URL", raising=False)
    assert main(["trace", "nope", "--wait", "0"]) == 2
    err = capsys.readouterr().err
    assert f"no spans for job nope in {tmp_path / 'spans'}" in err and "--jaeger URL" in err
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")  # spans went to OTLP: say so
    assert main(["trace", "nope", "--wait", "0"]) == 2
    assert "spans go to OTLP, not to the local store" in capsys.readouterr().err


def test_submit_without_inputs_tells_what_to_give(capsys):
    assert main(["submit", "vision"]) == 2
    assert "--digits-sample" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "said"), [("1000", "1000 is outside -100..100"), ("high", "'high' is not a whole")])
def test_a_priority_out_of_range_is_named_before_anything_is_sent(capsys, value, said):
    with pytest.raises(SystemExit) as exit_:
        main(["submit", "vision", "--digits-sample", "1", "--priority", value])
    assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_unreadable_image_file_is_named(capsys, tmp_path):
    bogus = tmp_path / "x.png"
    bogus.write_text("not an image")
    assert main(["submit", "vision", str(bogus)]) == 2
    assert "x.png" in capsys.readouterr().err


def test_help_runs_as_a_program():
    out = subprocess.run([sys.executable, "-m", "aiaas.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "submit" in out.stdout


@pytest.fixture
def home_without_broker(monkeypatch, tmp_path) -> Registry:
    """AIAAS_HOME at a tmp registry with vision v1 → v2 → v3 in production, and a closed broker port."""
    monkeypatch.setenv("AIAAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIAAS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("AIAAS_KAFKA_REQUEST_TIMEOUT_MS", "500")
    registry = Registry(tmp_path / "home" / "registry")
    artifact, table = tmp_path / "model.onnx", tmp_path / "table.npz"
    table.write_bytes(b"table")
    for number in (1, 2, 3):
        artifact.write_bytes(bytes([number]))
        registry.register("vision", artifact, companions=(table,), metrics={"accuracy": 0.9 + number / 100},
                          params={"epochs": number}, data_hash="d" * 64, parent=number - 1 or None,
                          job_id=f"train-{number}")
    return registry


def _not_told_warning(err: str) -> None:
    warning = [line for line in err.splitlines() if line.startswith("aiaas: warning:")]
    assert len(warning) == 1, err
    assert "were not told" in warning[0] and "127.0.0.1:1" in warning[0] and "when restarted" in warning[0]


def test_models_show_prints_one_versions_metadata_and_history(capsys, home_without_broker):
    assert main(["models", "show", "vision", "v2"]) == 0
    out = capsys.readouterr().out
    v2 = home_without_broker.resolve("vision", "2")
    for expected in ("vision v2", v2.sha256, "table.npz", "accuracy=0.92", '"epochs": 2', "d" * 64,
                     "parent      v1", "train-2", "created_at", "production  v1 → v2  registered"):
        assert expected in out, expected
    assert main(["models", "show", "vision"]) == 0  # production by default
    assert "aliases     production" in capsys.readouterr().out


def test_models_show_of_an_unknown_version_names_the_known_ones(capsys, home_without_broker):
    assert main(["models", "show", "vision", "v9"]) == 2
    assert "known: 1, 2, 3, production" in capsys.readouterr().err


def test_promote_moves_the_alias_even_when_the_broker_is_down(capsys, home_without_broker):
    assert main(["models", "promote", "vision", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "vision production: v3 → v1"
    _not_told_warning(captured.err)
    assert home_without_broker.aliases("vision") == {"production": 1}
    assert main(["models", "promote", "vision", "v2", "--alias", "staging"]) == 0
    assert capsys.readouterr().out.strip() == "vision staging: (none) → v2"
    assert home_without_broker.aliases("vision") == {"production": 1, "staging": 2}


def test_promote_to_where_the_alias_already_is_moves_nothing(capsys, home_without_broker):
    assert main(["models", "promote", "vision", "production"]) == 0
    captured = capsys.readouterr()
    assert "already v3, nothing moved" in captured.out and captured.err == ""


def test_rollback_moves_back_until_there_is_nothing_earlier(capsys, home_without_broker):
    assert main(["models", "rollback", "vision"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "vision production: v3 → v2 (rolled back)"
    _not_told_warning(captured.err)
    assert main(["models", "rollback", "vision"]) == 0
    assert home_without_broker.aliases("vision") == {"production": 1}
    capsys.readouterr()
    assert main(["models", "rollback", "vision"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no earlier version to roll back to" in err[0]
    assert main(["models", "show", "vision"]) == 0
    assert "v2 → v1  rolled_back" in capsys.readouterr().out


def test_build_registers_and_warns_when_it_cannot_announce(capsys, monkeypatch, home_without_broker, tmp_path):
    import aiaas.vision.trainer as trainer

    def build(registry: Registry):  # the CLI's part only: training has its own tests
        artifact = tmp_path / "built.onnx"
        artifact.write_bytes(b"built")
        return registry.register("vision", artifact, metrics={"accuracy": 0.99})

    monkeypatch.setattr(trainer, "build", build)
    assert main(["models", "build", "vision"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("built vision v4")
    _not_told_warning(captured.err)
    assert home_without_broker.aliases("vision") == {"production": 4}
