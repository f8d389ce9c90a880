"""The data plane: forward to the primary, mirror to candidates, record pairs in Redis.

Modules: forward (the data port), mirror (sampling, bounds, detached mirrors), runner
(the candidate runner contract), candidates (HTTP and deferred runners, which runner a
candidate gets), onnx_runner (ONNX in the proxy), http1 (the candidates' HTTP client),
capture (pair records to Redis), redact (secrets out of what is stored), routing (live
primary and candidates), paths (what is mirrored), metrics (every Prometheus metric),
tasks (bounded shutdown steps), http_limits (request limits on the data port).
app (the process's proxy and its lifespan) and server (ports, processes, signals) compose
it with the control plane (`control/`), which no other module here imports.
This package never imports `analysis`: the proxy stores raw bytes.
"""
