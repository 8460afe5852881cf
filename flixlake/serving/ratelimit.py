"""Per-account rate limit of ``GET /recommend/<userid>``: a request flood gets 429, not answers.

The generic cell rate algorithm (GCRA, the token bucket written as one number per account):
an account may make ``burst`` requests at once and then one every ``60 / requests_per_minute``
seconds. Its state is the *theoretical arrival time* ``tat``; a request at ``now`` is allowed
when ``tat - now <= (burst - 1) * interval`` and then moves ``tat`` one interval on. An account
whose ``tat`` has passed is as good as new, so :meth:`AccountRateLimiter.allow` forgets such
accounts every ``prune_seconds``: memory follows the accounts active in the last few intervals,
not every account ever seen. Each call is a dictionary lookup and a comparison.

Why here and not where events enter: the flood's cost is on the service (answers, and two
telemetry messages per answer that crowd out real users' records when the shipper falls
behind), and the log lines a flood leaves are the course's telemetry, which the lake must keep.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class AccountRateLimiter:
    """GCRA per account id; not thread-safe (the service answers on one event loop)."""

    def __init__(
        self,
        requests_per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        prune_seconds: float = 1.0,
    ) -> None:
        if requests_per_minute <= 0 or burst < 1:
            raise ValueError(
                f"need requests_per_minute > 0 and burst >= 1, got {requests_per_minute}, {burst}"
            )
        self.interval = 60.0 / requests_per_minute
        self.tolerance = (burst - 1) * self.interval
        self.clock = clock
        self.prune_seconds = prune_seconds
        self._tat: dict[int, float] = {}
        self._next_prune = clock() + prune_seconds

    def __len__(self) -> int:
        return len(self._tat)

    def allow(self, account: int) -> float:
        """0.0 when the request may go ahead, else the seconds until it would (Retry-After)."""
        now = self.clock()
        if now >= self._next_prune:
            self._tat = {a: t for a, t in self._tat.items() if t > now}
            self._next_prune = now + self.prune_seconds
        tat = self._tat.get(account, now)
        if tat < now:
            tat = now
        wait = tat - now - self.tolerance
        if wait > 0:
            return wait
        self._tat[account] = tat + self.interval
        return 0.0
