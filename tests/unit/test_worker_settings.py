"""Worker settings derived from others (settings.WorkerSettings): each model instance's ONNX Runtime threads, and the
in-flight window."""

import os

import pytest

from aiaas.recsys.settings import RecsysSettings
from aiaas.text.settings import TextSettings
from aiaas.vision.settings import VisionSettings


@pytest.fixture(autouse=True)
def _no_worker_settings_from_the_environment(monkeypatch):
    """The defaults under test, whatever the shell running the tests exports."""
    for name in list(os.environ):
        if name.startswith(("AIAAS_VISION_", "AIAAS_TEXT_", "AIAAS_RECSYS_")):
            monkeypatch.delenv(name)


def test_one_instance_keeps_onnx_runtime_s_default_and_several_share_out_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert TextSettings(model_instances=1).session_threads() == 0  # one: ONNX Runtime's own default (one per core)
    assert TextSettings().session_threads() == 4  # text runs two instances by default
    assert TextSettings(model_instances=3).session_threads() == 2
    assert TextSettings(model_instances=16).session_threads() == 1  # never fewer than one


def test_threads_set_by_hand_win_over_the_share(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert TextSettings(model_instances=2, intra_op_threads=3).session_threads() == 3
    assert RecsysSettings(model_instances=4).session_threads() == 1  # recsys defaults to one thread per session


def test_the_instance_count_is_read_from_the_model_s_environment(monkeypatch):
    monkeypatch.setenv("AIAAS_TEXT_MODEL_INSTANCES", "3")
    assert TextSettings().model_instances == 3
    assert TextSettings(backend="torch").model_instances == 3  # set by hand: kept for PyTorch too


def test_text_runs_two_instances_on_onnx_runtime_and_one_on_pytorch_unless_told(monkeypatch):
    assert TextSettings().model_instances == 2
    assert TextSettings(backend="torch").model_instances == 1
    assert VisionSettings().model_instances == RecsysSettings().model_instances == 1
    monkeypatch.setenv("AIAAS_TEXT_BACKEND", "torch")
    assert TextSettings().model_instances == 1


def test_the_in_flight_window_holds_four_batches_per_instance_within_256_and_4096():
    assert VisionSettings().in_flight_bound() == 256  # 4 x 64
    assert TextSettings().in_flight_bound() == 256  # 4 x 32 x 2 instances
    assert TextSettings(model_instances=1).in_flight_bound() == 256  # 4 x 32 is less: the floor
    assert RecsysSettings().in_flight_bound() == 1024  # 4 x 256
    assert RecsysSettings(model_instances=2).in_flight_bound() == 2048
    assert VisionSettings(max_batch=8).in_flight_bound() == 256
    assert VisionSettings(max_batch=2048).in_flight_bound() == 4096  # the cap on the default
    assert VisionSettings(max_batch=4096, model_instances=4).in_flight_bound() == 4096


def test_an_in_flight_window_set_by_hand_is_kept_but_never_below_one_batch(monkeypatch):
    monkeypatch.setenv("AIAAS_RECSYS_MAX_IN_FLIGHT", "300")
    assert RecsysSettings().in_flight_bound() == 300
    assert RecsysSettings(max_in_flight=100).in_flight_bound() == 256  # the pipeline takes one whole batch
    assert VisionSettings(max_in_flight=10_000).in_flight_bound() == 10_000  # no cap on a window set by hand


def test_text_limits_come_from_the_settings_and_the_call_overhead_is_measured_unless_set(monkeypatch):
    assert TextSettings().limits().call_overhead_tokens is None  # measured on the encoder when the runtime loads
    monkeypatch.setenv("AIAAS_TEXT_CALL_OVERHEAD_TOKENS", "256")
    monkeypatch.setenv("AIAAS_TEXT_MAX_BATCH_TOKENS", "4096")
    limits = TextSettings().limits()
    assert (limits.call_overhead_tokens, limits.max_batch_tokens) == (256, 4096)


def test_small_models_call_on_the_event_loop_when_they_compute_on_the_cpu_and_text_on_its_threads(monkeypatch):
    assert VisionSettings().model_calls == RecsysSettings().model_calls == "auto"
    assert TextSettings().model_calls == "thread"  # calls of ~100 ms: fetching and publishing go on meanwhile
    monkeypatch.setenv("AIAAS_RECSYS_MODEL_CALLS", "thread")
    assert RecsysSettings().model_calls == "thread"
    monkeypatch.setenv("AIAAS_VISION_MODEL_CALLS", "sideways")
    with pytest.raises(ValueError, match="model_calls"):
        VisionSettings()


def test_consumer_group_timeouts_are_settings_and_a_heartbeat_must_fit_in_the_session(monkeypatch):
    default = VisionSettings()
    assert (default.session_timeout_ms, default.heartbeat_interval_ms, default.max_poll_interval_ms) == \
        (10_000, 3_000, 300_000)  # aiokafka's defaults
    monkeypatch.setenv("AIAAS_VISION_SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("AIAAS_VISION_HEARTBEAT_INTERVAL_MS", "2000")
    monkeypatch.setenv("AIAAS_VISION_MAX_POLL_INTERVAL_MS", "10000")
    short = VisionSettings()
    assert (short.session_timeout_ms, short.heartbeat_interval_ms, short.max_poll_interval_ms) == (6000, 2000, 10000)
    monkeypatch.setenv("AIAAS_VISION_HEARTBEAT_INTERVAL_MS", "6000")
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        VisionSettings()
