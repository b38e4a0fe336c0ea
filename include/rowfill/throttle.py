"""How long a chunk breathes between batches, so live traffic gets the database back in between.

Kept apart from the runner so pacing policies can grow without touching the batch loop.
"""

from __future__ import annotations

import time
from typing import Callable


class Throttle:
    """Paces one chunk: the size of the next batch and the rest after it.

    The runner asks ``batch_rows`` before each batch and calls ``after_batch`` after each
    commit; ``sleep`` is injectable so tests can use a fake clock.
    """

    def __init__(self, pause: float, batch_rows: int = 1000, sleep: Callable[[float], None] = time.sleep):
        self.pause = pause
        self.batch_rows = batch_rows
        self._sleep = sleep
        self.slept = 0.0

    @classmethod
    def for_spec(cls, spec, sleep: Callable[[float], None] = time.sleep) -> "Throttle":
        return cls(spec.pause, spec.batch_rows, sleep)

    def after_batch(self, batch_seconds: float, rows: int = 0) -> None:
        if self.pause > 0:
            self._sleep(self.pause)
            self.slept += self.pause

    def backoff(self, attempt: int) -> float:
        """Wait before retrying a batch that hit a lock or statement timeout: 0.5 s, 1 s, 2 s, ... 30 s."""
        delay = min(30.0, 0.5 * 2 ** attempt)
        self._sleep(delay)
        self.slept += delay
        return delay
