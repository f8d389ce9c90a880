"""`shadowtrial demo`: the silent failure caught on a laptop, with real parts.

data (the Fair survey from statsmodels), models (v1, v2 good or flawed, ONNX export),
config (the generated shadowtrial.toml), traffic (load generator and late labels),
processes (child supervision), summary (what it prints), run (the whole sequence); the
models are served by shadowtrial.examples.model_server. Only `run` is imported by the
command; the rest on demand.
"""
