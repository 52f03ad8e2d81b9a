import subprocess
import sys

from aiaas.cli import main


def test_unreachable_broker_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setenv("AIAAS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["topics"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "127.0.0.1:1" in err[0] and "infra/kafka/kafka.sh start" in err[0]


def test_trace_of_an_unknown_job_says_where_it_looked(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AIAAS_HOME", str(tmp_path))
    assert main(["trace", "nope", "--wait", "0"]) == 2
    assert "no spans for job nope" in capsys.readouterr().err


def test_submit_without_inputs_tells_what_to_give(capsys):
    assert main(["submit", "vision"]) == 2
    assert "--digits-sample" in capsys.readouterr().err


def test_unreadable_image_file_is_named(capsys, tmp_path):
    bogus = tmp_path / "x.png"
    bogus.write_text("not an image")
    assert main(["submit", "vision", str(bogus)]) == 2
    assert "x.png" in capsys.readouterr().err


def test_help_runs_as_a_program():
    out = subprocess.run([sys.executable, "-m", "aiaas.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "submit" in out.stdout
