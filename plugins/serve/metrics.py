"""Counters and histograms for ``GET /metrics`` in the Prometheus text exposition format (v0.0.4,
https://prometheus.io/docs/instrumenting/exposition_formats/). Thread-safe: the model worker records
batches while the event loop records requests."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Cumulative buckets with ``le`` upper bounds, plus sum and count (Prometheus histogram)."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value`` (seconds or items, as the histogram's buckets)."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self) -> list[str]:
        """The histogram in the Prometheus text format (HELP, TYPE, cumulative buckets, sum, count)."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, count in zip([*map(_number, self.buckets), "+Inf"], self.counts):
            total += count
            out.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        out += [f"{self.name}_sum {_number(self.sum)}", f"{self.name}_count {total}"]
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """The server's counters and histograms (requests by route and status, latency, batch sizes), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()  # (method, route, status)
        self.latency = Histogram(
            "pixel_llm_request_duration_seconds", "Time from request to response.", LATENCY_BUCKETS
        )
        self.batch_images = Histogram(
            "pixel_llm_batch_images", "Images decoded together in one model call.", BATCH_BUCKETS
        )
        self.batch_requests = Histogram(
            "pixel_llm_batch_requests", "Caption requests served by one model call.", BATCH_BUCKETS
        )
        self.images = 0
        self.queued_images = 0
        self.in_flight = 0

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a finished HTTP request and its duration in seconds."""
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.latency.observe(seconds)

    def batch_done(self, images: int, requests: int) -> None:
        """Count one model call that captioned ``images`` images for ``requests`` requests."""
        with self._lock:
            self.batch_images.observe(images)
            self.batch_requests.observe(requests)
            self.images += images

    def render(self) -> str:
        """All metrics in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP pixel_llm_requests_total HTTP requests by method, route and status.",
                "# TYPE pixel_llm_requests_total counter",
            ]
            for (method, route, status), count in sorted(self.requests.items()):
                lines.append(f'pixel_llm_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}')
            errors: Counter[str] = Counter()
            for (_, _, status), count in self.requests.items():
                if status >= 400:
                    errors[str(status)] += count
            lines += [
                "# HELP pixel_llm_errors_total Responses with a 4xx or 5xx status.",
                "# TYPE pixel_llm_errors_total counter",
            ]
            lines += [f'pixel_llm_errors_total{{status="{s}"}} {n}' for s, n in sorted(errors.items())]
            lines += [
                "# HELP pixel_llm_images_total Images captioned.",
                "# TYPE pixel_llm_images_total counter",
                f"pixel_llm_images_total {self.images}",
                "# HELP pixel_llm_queue_images Images waiting for the model.",
                "# TYPE pixel_llm_queue_images gauge",
                f"pixel_llm_queue_images {self.queued_images}",
                "# HELP pixel_llm_in_flight_requests Requests being served.",
                "# TYPE pixel_llm_in_flight_requests gauge",
                f"pixel_llm_in_flight_requests {self.in_flight}",
            ]
            for histogram in (self.latency, self.batch_images, self.batch_requests):
                lines += histogram.lines()
        return "\n".join(lines) + "\n"
