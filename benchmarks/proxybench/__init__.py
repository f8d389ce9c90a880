"""The proxy benchmark harness behind `benchmarks/run_proxy_bench.py` (see benchmarks/README.md).

`plan` (flags, configurations, runtime estimate), `bench` (servers and phases), `procs`
(processes by PID and their CPU), `render` (templates), `results` and `report` (pure:
parsing, medians, ratios, targets, the RESULTS.md section), `profile` (py-spy tables),
`openloop` (the fixed-rate load generator), `slow_upstream` (the 500 ms candidate).
"""
