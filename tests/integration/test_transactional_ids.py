"""Two exactly-once replicas of the vision service on one host never share a transactional id."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.integration.conftest import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_replicas_on_one_host_are_numbered_and_a_repeated_explicit_instance_id_is_refused(
        service_env, vision_registry, tmp_path):
    env = service_env | {"AIAAS_VISION_DELIVERY": "exactly-once"}
    env.pop("AIAAS_VISION_INSTANCE_ID", None)
    first = ServiceProcess(env, tmp_path / "first.log")
    second = ServiceProcess(env, tmp_path / "second.log")
    try:
        first.start()
        second.start()  # same host, default instance id: numbered instead of fencing the first
        group = f"{env['AIAAS_KAFKA_TOPIC_PREFIX']}.vision"
        ids = {line.split(" as ")[-1].split(",")[0] for s in (first, second) for line in s.log_text().splitlines()
               if "exactly-once as " in line}
        assert len(ids) == 2 and all(i.startswith(f"{group}.") for i in ids), ids
        time.sleep(2)
        assert first.proc.poll() is None and second.proc.poll() is None  # neither fenced the other
    finally:
        second.stop()
        first.stop()

    named = env | {"AIAAS_VISION_INSTANCE_ID": "replica-0"}
    holder = ServiceProcess(named, tmp_path / "holder.log").start()
    try:
        refused = subprocess.run([sys.executable, "-m", "aiaas.vision"], env=named, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "AIAAS_<MODEL>_INSTANCE_ID" in refused.stderr and f"{group}.replica-0" in refused.stderr
        assert holder.proc.poll() is None  # the first one was not fenced
    finally:
        holder.stop()
