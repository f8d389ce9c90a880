"""The hot path: forward to the primary, mirror to candidates, record pairs in Redis.

Modules: app (the process's proxy and its lifespan), forward (the data port), mirror
(sampling, bounds, detached mirrors), candidates (runners behind one Protocol), capture
(pair records to Redis), routing (live primary and candidates), admin (admin port),
metrics (every Prometheus metric), server (ports, processes, signals).
This package never imports `analysis`: the proxy stores raw bytes.
"""
