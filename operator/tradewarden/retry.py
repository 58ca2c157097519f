"""Capped exponential backoff with jitter, the one definition (pure: the random source is passed in).
The gateway's stream reconnects and the controller's retries of builds and initial syncs both use it."""
from __future__ import annotations

import math
import random
from typing import Callable


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0,
                  rng: Callable[[], float] | None = None) -> float:
    """The wait before retry number ``attempt`` (0 for the first): uniform in [c/2, c] with
    c = min(cap, base * 2^attempt), so many clients retrying together spread out."""
    ceiling = min(cap, base * math.pow(2, max(0, attempt)))
    r = (rng or random.random)()
    return ceiling / 2 + r * ceiling / 2
