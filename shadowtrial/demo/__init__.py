"""`shadowtrial demo`: the silent failure caught on a laptop, with real parts.

data (the Fair survey from statsmodels), models (v1, v2 good or flawed, ONNX export),
model_server (OIP v2 over HTTP), config (the generated shadowtrial.toml), traffic (load
generator and late labels), processes (child supervision), summary (what it prints),
run (the whole sequence). Only `run` is imported by the command; the rest on demand.
"""
