"""Prometheus text metrics of one serving process: requests by route and status, a latency histogram per
route, and gauges supplied at scrape time (cache items and bytes, store size)."""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters and histograms, rendered in the Prometheus text format (version 0.0.4)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one request of ``route`` that ended with ``status`` after ``seconds``."""
        with self._lock:
            self._requests[(route, status)] += 1
            counts = self._buckets.setdefault(route, [0] * len(LATENCY_BUCKETS))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; ``gauges`` maps a metric name to (help text, value)."""
        lines = ["# HELP twinv2_requests_total HTTP requests by route and status.",
                 "# TYPE twinv2_requests_total counter"]
        with self._lock:
            for (route, status), n in sorted(self._requests.items()):
                lines.append(f'twinv2_requests_total{{route="{_label(route)}",status="{status}"}} {n}')
            lines += ["# HELP twinv2_request_seconds Request latency by route.",
                      "# TYPE twinv2_request_seconds histogram"]
            for route, counts in sorted(self._buckets.items()):
                r = _label(route)
                for bound, c in zip(LATENCY_BUCKETS, counts, strict=True):
                    lines.append(f'twinv2_request_seconds_bucket{{route="{r}",le="{bound}"}} {c}')
                lines.append(f'twinv2_request_seconds_bucket{{route="{r}",le="+Inf"}} {self._count[route]}')
                lines.append(f'twinv2_request_seconds_sum{{route="{r}"}} {self._sum[route]:.6f}')
                lines.append(f'twinv2_request_seconds_count{{route="{r}"}} {self._count[route]}')
        for name, (help_text, value) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
