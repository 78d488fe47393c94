"""Counters and latency histograms, rendered in the Prometheus text format.

One ``Metrics`` is made in ``main`` and handed to the pipeline, the store and the web app.
Everything runs on the Trio thread, so plain integers need no locks.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

STAGE_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """A cumulative-bucket histogram of seconds."""

    def __init__(self, buckets: Iterable[float] = STAGE_BUCKETS_S) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


class Metrics:
    """What the service counts; ``render`` adds gauges read at scrape time."""

    def __init__(self) -> None:
        self.accepted_total = 0
        self.stored_total = 0
        self.stored_bytes_total = 0
        self.refused: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.stages: dict[str, Histogram] = {}
        self.gauges: dict[str, Callable[[], dict[str, float]]] = {}
        self.cache: Any = None  # the store's metadata cache (hits, misses, bytes)

    def accepted(self, n: int = 1) -> None:
        self.accepted_total += n

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def failed(self, code: str) -> None:
        self.failures[code] += 1

    def stored(self, size: int) -> None:
        self.stored_total += 1
        self.stored_bytes_total += size

    def observe_stage(self, stage: str, seconds: float) -> None:
        hist = self.stages.get(stage)
        if hist is None:
            hist = self.stages[stage] = Histogram()
        hist.observe(seconds)

    def gauge(self, name: str, read: Callable[[], dict[str, float]]) -> None:
        """Register a gauge family whose labelled values are read at each scrape."""
        self.gauges[name] = read

    def observe_cache(self, cache: Any) -> None:
        """Report the store's metadata cache (``store.reads.MetaCache``)."""
        self.cache = cache

    def render(self) -> str:
        out = [
            "# HELP trio_audio_accepted_total Chunks taken into the pipeline.",
            "# TYPE trio_audio_accepted_total counter",
            f"trio_audio_accepted_total {self.accepted_total}",
            "# HELP trio_audio_stored_total Chunks durably stored.",
            "# TYPE trio_audio_stored_total counter",
            f"trio_audio_stored_total {self.stored_total}",
            "# HELP trio_audio_stored_bytes_total Audio bytes durably stored.",
            "# TYPE trio_audio_stored_bytes_total counter",
            f"trio_audio_stored_bytes_total {self.stored_bytes_total}",
            "# HELP trio_audio_refused_total Requests refused before processing, by reason.",
            "# TYPE trio_audio_refused_total counter",
        ]
        out += [f'trio_audio_refused_total{{reason="{r}"}} {n}' for r, n in self.refused.items()]
        out += [
            "# HELP trio_audio_failed_total Chunks that failed, by error code.",
            "# TYPE trio_audio_failed_total counter",
        ]
        out += [f'trio_audio_failed_total{{code="{c}"}} {n}' for c, n in self.failures.items()]
        out += [
            "# HELP trio_audio_stage_seconds Time a chunk (or a commit batch) spends in a stage.",
            "# TYPE trio_audio_stage_seconds histogram",
        ]
        for stage, hist in self.stages.items():
            out += hist.render("trio_audio_stage_seconds", f'stage="{stage}"')
        if self.cache is not None:
            cache = self.cache
            out += [
                "# HELP trio_audio_meta_cache_hits_total Chunk metadata reads the cache answered.",
                "# TYPE trio_audio_meta_cache_hits_total counter",
                f"trio_audio_meta_cache_hits_total {cache.hits}",
                "# HELP trio_audio_meta_cache_misses_total Chunk metadata reads from the log.",
                "# TYPE trio_audio_meta_cache_misses_total counter",
                f"trio_audio_meta_cache_misses_total {cache.misses}",
                "# HELP trio_audio_meta_cache_bytes Bytes the metadata cache holds.",
                "# TYPE trio_audio_meta_cache_bytes gauge",
                f"trio_audio_meta_cache_bytes {cache.bytes}",
            ]
        for name, read in self.gauges.items():
            out.append(f"# TYPE {name} gauge")
            for label, value in read().items():
                out.append(f"{name}{{{label}}} {value:g}")
        return "\n".join(out) + "\n"
