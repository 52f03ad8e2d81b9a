"""Hot reload on the real broker: a new production version takes over mid-stream, no job lost or failed."""

from __future__ import annotations

import asyncio

import pytest

from aiaas.client.client import AiaasClient
from aiaas.registry.announce import ModelEvent, announce
from aiaas.registry.store import Registry
from aiaas.vision.trainer import TrainParams, build
from tests.integration.conftest import ServiceProcess
from tests.integration.test_vision_end_to_end import digit_jobs

pytestmark = pytest.mark.integration


async def test_results_switch_to_the_promoted_version_without_a_failed_or_lost_job(kafka_settings, service_env,
                                                                                   tmp_path):
    registry = Registry(tmp_path / "home" / "registry")
    first = build(registry, TrainParams(epochs=4))
    service = ServiceProcess(service_env | {"AIAAS_HOME": str(registry.root.parent)}, tmp_path / "vision.log").start()
    images = [image for image, _ in digit_jobs(50)]
    try:
        async with AiaasClient(kafka_settings) as client:
            async def steady_stream(n: int, rate: float) -> list:
                handles = []
                for i in range(n):
                    handles.append(await client.submit("vision", {"image": images[i % len(images)]}))
                    await asyncio.sleep(1 / rate)
                return handles

            stream = asyncio.create_task(steady_stream(500, rate=100))
            await asyncio.sleep(1.0)
            second = await asyncio.to_thread(build, registry, TrainParams(epochs=4, seed=1))
            await announce(kafka_settings, ModelEvent(model="vision", action="registered", version=second.version,
                                                      aliases=registry.aliases("vision")))
            handles = await stream
            results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    finally:
        service.stop()
    assert [r.status for r in results].count("ok") == len(handles) == 500
    versions = [r.model_version for r in results]
    assert set(versions) == {str(first.version), str(second.version)}
    switched = versions.index(str(second.version))
    assert all(v == str(second.version) for v in versions[switched + 64:]), "old version kept serving after the swap"
    assert "v2 loaded in the background" in service.log_text() and "now serving v2 (was v1)" in service.log_text()
