"""A tiny OIP v2 model for `shadowtrial demo --scenario canary`: a threshold, no training.

`POST /v2/models/score/infer` with one FP32 value answers the label `high` when it is at
least 0.5, else `low` (primary and candidate alike: the shadow passes). `POST /regress` on
the candidate plants the regression the canary must catch: from then on it answers `low`
for every value, wrong on the high half. `GET /v2/health/ready` for the demo's start-up.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INFER = "/v2/models/score/infer"
REGRESS = "/regress"


class Handler(BaseHTTPRequestHandler):
    """The model's endpoints; `regressed` is shared by the server's threads."""

    regressed = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the demo's logs stay short."""

    def do_GET(self) -> None:
        ready = self.path == "/v2/health/ready"
        self._send(200 if ready else 404, b'{"ready": true}' if ready else b"{}")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(min(length, 1_000_000))
        if self.path == REGRESS:
            self.regressed.set()
            self._send(200, b'{"regressed": true}')
            return
        if self.path != INFER:
            self._send(404, b'{"error": "no such path"}')
            return
        try:
            value = float(json.loads(body)["inputs"][0]["data"][0])
        except (ValueError, KeyError, IndexError, TypeError):
            self._send(400, b'{"error": "expected one FP32 input"}')
            return
        label = "high" if value >= 0.5 and not self.regressed.is_set() else "low"
        output = {"name": "label", "shape": [1], "datatype": "BYTES", "data": [label]}
        self._send(200, json.dumps({"model_name": "score", "outputs": [output]}).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
