from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np

from aiaas.contract.envelopes import InputValue, Tensor


def payloads(registry: Any, rng: random.Random) -> Callable[[], tuple[dict[str, InputValue], str | None]]:
    return lambda: ({"x": Tensor.from_numpy(np.array([rng.random() for _ in range(4)], np.float32))}, None)
