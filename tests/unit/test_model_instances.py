"""Model instances: how each instance's ONNX Runtime session gets its threads (settings.WorkerSettings)."""

import os

from aiaas.recsys.settings import RecsysSettings
from aiaas.text.settings import TextSettings


def test_one_instance_keeps_onnx_runtime_s_default_and_several_share_out_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert TextSettings().session_threads() == 0  # one instance: ONNX Runtime's own default (a thread per core)
    assert TextSettings(model_instances=2).session_threads() == 4
    assert TextSettings(model_instances=3).session_threads() == 2
    assert TextSettings(model_instances=16).session_threads() == 1  # never fewer than one


def test_threads_set_by_hand_win_over_the_share(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert TextSettings(model_instances=2, intra_op_threads=3).session_threads() == 3
    assert RecsysSettings(model_instances=4).session_threads() == 1  # recsys defaults to one thread per session


def test_the_instance_count_is_read_from_the_model_s_environment(monkeypatch):
    monkeypatch.setenv("AIAAS_TEXT_MODEL_INSTANCES", "2")
    assert TextSettings().model_instances == 2

