"""Counters kept per endpoint, in constant memory whatever the number of requests."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

_BUCKETS_PER_DOUBLING = 16  # ~4.4% relative error on a percentile
_MIN_LATENCY = 1e-4


class LatencyHistogram:
    """Log-spaced histogram of latencies: percentiles within a few percent, O(1) memory."""

    __slots__ = ("counts", "n")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0

    def add(self, seconds: float) -> None:
        index = int(math.log2(max(seconds, _MIN_LATENCY) / _MIN_LATENCY) * _BUCKETS_PER_DOUBLING)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.n += 1

    def percentile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = max(1, math.ceil(q / 100 * self.n))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:  # the bucket's geometric middle
                return _MIN_LATENCY * 2 ** ((index + 0.5) / _BUCKETS_PER_DOUBLING)
        raise AssertionError("unreachable")


@dataclass(slots=True)
class EndpointStats:
    name: str
    model: str
    requests: int = 0
    """Requests answered successfully (journal hits are not requests)."""
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures: int = 0
    """Requests that finally failed."""
    errors: int = 0
    """Failed attempts, of any kind."""
    tokens_in: int = 0
    tokens_out: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def to_dict(self) -> dict[str, Any]:
        p = self.latency.percentile
        return {
            "endpoint": self.name,
            "model": self.model,
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "failures": self.failures,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_p50": p(50),
            "latency_p95": p(95),
            "latency_p99": p(99),
        }
