"""How long a chunk breathes between batches, so live traffic gets the database back in between.

Kept apart from the runner so pacing policies can grow without touching the batch loop.
"""

from __future__ import annotations

import time
from typing import Callable


class Throttle:
    """A fixed pause after every batch; ``sleep`` is injectable so tests can use a fake clock."""

    def __init__(self, pause: float, sleep: Callable[[float], None] = time.sleep):
        self.pause = pause
        self._sleep = sleep
        self.slept = 0.0

    def after_batch(self, batch_seconds: float) -> None:
        if self.pause > 0:
            self._sleep(self.pause)
            self.slept += self.pause

    def backoff(self, attempt: int) -> float:
        """Wait before retrying a batch that hit a lock or statement timeout: 0.5 s, 1 s, 2 s, ... 30 s."""
        delay = min(30.0, 0.5 * 2 ** attempt)
        self._sleep(delay)
        self.slept += delay
        return delay
