"""A model type added from outside aiaas, through its registration alone, is listed, built, served and answered.

The `toy` type (`tests/toy_model_type/aiaas_toy`) registers with an entry point in the group `aiaas.model_types`,
written here into a `dist-info` folder as installing a plug-in distribution would write it. Nothing in aiaas
names it: `aiaas models build toy`, `aiaas serve toy` and `aiaas submit toy` find it by asking the registration.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aiaas.client.client import AiaasClient
from aiaas.contract.envelopes import Tensor
from aiaas.model_types import BUILT_IN
from tests.harness import service_env
from tests.integration.conftest import ServiceProcess

TOY = Path(__file__).resolve().parents[1] / "toy_model_type"

pytestmark = pytest.mark.integration


@pytest.fixture
def plugin_env(tmp_path: Path, kafka_broker: str, topic_prefix: str) -> dict[str, str]:
    """The environment of a machine where the toy plug-in distribution is installed."""
    dist = tmp_path / "site" / "aiaas_toy_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aiaas-toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[aiaas.model_types]\ntoy = aiaas_toy:MODEL_TYPE\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "site"), str(TOY), os.environ.get("PYTHONPATH")]))
    return service_env(kafka_broker, topic_prefix, tmp_path / "home", {"PYTHONPATH": path})


def _aiaas(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiaas.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_plugin_type_is_listed_beside_the_built_in_ones(plugin_env):
    listed = _aiaas(plugin_env, "serve", "--help")
    assert listed.returncode == 0, listed.stderr
    every = "{" + ",".join([*(model.name for model in BUILT_IN), "toy"]) + "}"  # the built-in ones, then the plug-in
    assert every in listed.stdout and "toy: doubles a vector" in listed.stdout
    without = _aiaas({k: v for k, v in plugin_env.items() if k != "PYTHONPATH"}, "serve", "toy")
    assert without.returncode == 2 and "invalid choice: 'toy'" in without.stderr


async def test_the_plugin_type_is_built_served_and_answers_jobs(plugin_env, kafka_settings, tmp_path):
    built = _aiaas(plugin_env, "models", "build", "toy")
    assert built.returncode == 0, built.stderr
    assert "built toy v1" in built.stdout
    service = ServiceProcess(plugin_env, tmp_path / "toy.log", "toy", "serve", "toy", module="aiaas.cli").start()
    try:
        async with AiaasClient(kafka_settings) as client:
            x = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
            result = await (await client.submit("toy", {"x": Tensor.from_numpy(x)})).result(timeout=60)
        assert result.status == "ok" and result.model_version == "1"
        assert result.outputs["y"].to_numpy().tolist() == (2 * x).tolist()
        submitted = _aiaas(plugin_env, "submit", "toy", "--x", "1", "2", "3", "4", "--wait", "--timeout", "60")
        assert submitted.returncode == 0, submitted.stderr
        assert "y=2 4 6 8" in submitted.stdout
    finally:
        service.stop()
