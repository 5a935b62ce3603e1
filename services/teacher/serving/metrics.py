"""Prometheus metrics of the teacher, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class TeacherMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lfi_teacher_requests_total", "Requests by team, route and status",
                                ["team", "route", "status"], registry=self.registry)
        self.cache = Counter("lfi_teacher_cache_total", "Map cache look-ups", ["result"], registry=self.registry)
        self.queue_depth = Gauge("lfi_teacher_queue_depth", "Requests waiting for the GPU",
                                 ["team", "priority"], registry=self.registry)
        self.batch_size = Histogram("lfi_teacher_batch_size", "Requests per GPU batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.batch_seconds = Histogram("lfi_teacher_batch_seconds", "GPU time per batch",
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=self.registry)
        self.latency = Histogram("lfi_teacher_request_seconds", "Request latency by route", ["route"],
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.gpu_busy = Gauge("lfi_teacher_gpu_busy_fraction", "Share of the last minute the GPU ran batches",
                              registry=self.registry)
        self.maps_computed = Counter("lfi_teacher_maps_computed_total", "Maps computed by the engine", ["team"],
                                     registry=self.registry)
        self.dropped = Gauge("lfi_teacher_dropped_total", "Queued requests dropped (client gone, deadline)",
                             registry=self.registry)

    def maps_computed_total(self) -> int:
        """Maps the engine computed, all teams together (`/stats` reports it as `engine_runs`)."""
        return int(sum(sample.value for metric in self.maps_computed.collect() for sample in metric.samples
                       if sample.name.endswith("_total")))
