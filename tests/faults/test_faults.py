"""The fault scenarios under pytest, with a small N: nothing lost, no duplicate reaches the reader's
application; in exactly-once mode no duplicate result in the topic either.

Each test is one scenario in one delivery mode (fresh topics, groups and processes) against a broker
of this module's own, which scenario 3 restarts. N is AIAAS_FAULT_JOBS (default 1500), published at
AIAAS_FAULT_RATE jobs/s (default 300). `python -m tests.faults.run` is the full-size program.

Scenarios 1-6 run in both modes; of the later ones only the quick hostile-input ones (7 hostile headers,
8 refused reply_to) run here, in exactly-once mode (the stricter one: a bad input must not break a
transaction; both modes of the same records are in tests/integration/test_hostile_headers.py). The others
(retries during a rebalance, a frozen worker, the tenant flood) take long fixed waits and need N = 10,000
to mean anything: `python -m tests.faults.run` runs them.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.faults.report import markdown, verdict
from tests.faults.scenarios import MODES, SCENARIOS, Options, run_one
from tests.harness import LocalBroker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = int(os.environ.get("AIAAS_FAULT_JOBS", "1500"))
RATE = float(os.environ.get("AIAAS_FAULT_RATE", "300"))


def fault_port() -> int:
    """AIAAS_FAULT_KAFKA_PORT, else the test broker's port + 4 (29096 by default; controller + 1).

    Below the ephemeral range on purpose, like every port the suite uses: while scenario 3's broker is
    down, the services' clients keep reconnecting, and one given the broker's own port as its local port
    connects to itself and holds it.
    """
    if "AIAAS_FAULT_KAFKA_PORT" in os.environ:
        return int(os.environ["AIAAS_FAULT_KAFKA_PORT"])
    return int(os.environ.get("AIAAS_TEST_KAFKA_PORT", "29092")) + 4


@pytest.fixture(scope="module")
async def fault_broker(tmp_path_factory):
    """A broker of this module's own (scenario 3 restarts it), on `fault_port()`."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("the fault suite needs Java 17+ and Maven to fetch and run the local Kafka broker")
    broker = LocalBroker(fault_port(), tmp_path_factory.mktemp("fault-kafka"))
    try:
        await broker.start_async()
    except RuntimeError as exc:
        pytest.fail(f"the fault suite's broker did not start: {exc}")
    yield broker
    await broker.stop_async()


CASES = [(number, mode) for number in range(1, 7) for mode in MODES] + [(7, "exactly-once"), (8, "exactly-once")]


@pytest.mark.parametrize(("number", "mode"), CASES)
async def test_scenario(number, mode, fault_broker, vision_registry, tmp_path):
    scenario = SCENARIOS[number]
    opts = Options(jobs=JOBS, home=vision_registry.root.parent, workdir=tmp_path, rate=RATE, stall_s=60)
    row = await run_one(scenario, mode, opts, fault_broker)
    if not fault_broker.running:
        await fault_broker.start_async()
    report = markdown([row], command="pytest tests/faults", jobs=JOBS, rate=RATE, seed=0, started="", total_s=0)
    print(report.split("| scenario |", 1)[1].split("## Columns")[0])
    print(report.split("## What happened in each run", 1)[1])
    assert row.error is None, row.error
    check = row.check
    assert check.sent == JOBS
    assert check.lost == 0, f"lost {check.lost}, e.g. {check.lost_ids}"
    assert check.client_duplicates == 0
    # The client marks a job seen just before handing it over: a kill -9 of the reader may lose the one in hand.
    assert check.reader_missed <= row.reader_kills
    if mode == "exactly-once":
        assert check.topic_duplicates == 0, f"{check.topic_duplicates} duplicate results, e.g. {check.duplicate_ids}"
    assert row.input_restarts == 0, "a worker exited by itself"
    if scenario.hostile:
        assert row.bad_sent > 0 and check.dlq >= row.dlq_expected
        assert not check.bad_unexpected, check.bad_unexpected
    assert not verdict([row])
