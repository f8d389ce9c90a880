"""The proxy benchmark harness behind `benchmarks/run_proxy_bench.py` (see benchmarks/README.md).

Pure parts (parsing, medians, ratios, targets, the RESULTS.md section) live in `results`;
processes in `procs`; rendered configs in `render`; the load generators' runs in `runner`.
"""
