"""The models shadowtrial runs itself, for the proxy (proxy.onnx_runner), the worker
(ONNX candidates with run = "worker") and the example model server alike.

Modules: onnx_model (an ONNX file fed from an input adapter's rows, answering OIP v2).
Outside `common/` because it is a model runner with a heavy dependency (onnxruntime), not
plumbing every process shares; it imports only `common`.
"""
