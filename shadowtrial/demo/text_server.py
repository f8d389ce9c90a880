"""Two small local text "models" for `shadowtrial demo --scenario llm`: no real LLM.

An OpenAI-compatible `/v1/chat/completions` (stdlib HTTP server) answering questions on
four topics from a fixed bank. `--variant primary` gives the reference answers;
`--variant candidate` rewords most of them (the same meaning in other words) and answers
the billing topic wrongly, and insists on its own credentials and model name (sent by the
proxy from `headers` and `body_set`, never the client's).

    python -m shadowtrial.demo.text_server --port 8001 --variant primary
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CANDIDATE_KEY = "demo-candidate-key"  # the demo's stand-in for another provider's key
CANDIDATE_MODEL = "small-v2"
# topic -> [(question, primary's answer, the candidate's answer)]
BANK: dict[str, list[tuple[str, str, str]]] = {
    "geography": [
        ("What is the capital of France?", "Paris is the capital of France.",
         "The capital of France is Paris."),
        ("Which river is the longest in Africa?", "The Nile is the longest river in Africa.",
         "Africa's longest river is the Nile."),
        ("Where is Mount Fuji?", "Mount Fuji is in Japan, on the island of Honshu.",
         "Mount Fuji stands on Honshu, in Japan."),
    ],
    "cooking": [
        ("How long should I boil pasta?", "Boil the pasta for about ten minutes in salted water.",
         "Cook the pasta in salted boiling water for roughly ten minutes."),
        ("How do I proof bread dough?", "Let the dough rise for an hour in a warm place.",
         "Leave the dough somewhere warm for about an hour so it can rise."),
        ("How do I keep herbs fresh?", "Wrap fresh herbs in a damp paper towel in the fridge.",
         "Keep fresh herbs in the fridge wrapped in a moist paper towel."),
    ],
    "billing": [
        ("When is my invoice sent?", "Your invoice is sent on the first day of each month.",
         "Invoices are never sent; you must call support to get one."),
        ("How can I pay?", "You can pay by card or by bank transfer.",
         "Only cash is accepted, at our office."),
        ("Can I get a refund?", "Yes, refunds are possible within thirty days of purchase.",
         "Refunds are not possible under any circumstances."),
    ],
    "support": [
        ("How do I reset my password?", "Click 'Forgot password' on the sign-in page.",
         "On the sign-in page, choose 'Forgot password'."),
        ("How do I contact support?", "Write to support through the help page.",
         "Use the help page to send support a message."),
        ("Is my data encrypted?", "Yes, your data is encrypted at rest and in transit.",
         "Your data is encrypted both in transit and at rest."),
    ],
}  # fmt: skip
ANSWERS = {q: (p, c) for qs in BANK.values() for q, p, c in qs}


def answer_for(question: str, variant: str) -> str:
    """The variant's answer to a known question (an unknown one gets a fixed reply)."""
    primary, candidate = ANSWERS.get(question, ("I do not know.", "I don't know."))
    return candidate if variant == "candidate" else primary


def completion(text: str, model: str) -> bytes:
    """An OpenAI chat.completion body."""
    message = {"role": "assistant", "content": text}
    body = {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    return json.dumps(body).encode()


class Handler(BaseHTTPRequestHandler):
    """POST /v1/chat/completions; GET /health."""

    variant = "primary"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the demo's logs stay short."""

    def do_GET(self) -> None:
        self._send(200 if self.path == "/health" else 404, b'{"ok": true}')

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            request = json.loads(self.rfile.read(min(length, 1_000_000)))
            question = str(request["messages"][-1]["content"])
            model = str(request.get("model", ""))
        except (ValueError, KeyError, IndexError, TypeError):
            self._send(400, b'{"error": "expected a chat request"}')
            return
        if self.variant == "candidate" and not self._own_request(model):
            self._send(401, b'{"error": "not this provider\'s key or model"}')
            return
        self._send(200, completion(answer_for(question, self.variant), model))

    def _own_request(self, model: str) -> bool:
        return (
            self.headers.get("authorization") == f"Bearer {CANDIDATE_KEY}"
            and model == CANDIDATE_MODEL
        )

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", choices=["primary", "candidate"], default="primary")
    args = parser.parse_args()
    Handler.variant = args.variant
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
