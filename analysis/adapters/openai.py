"""OpenAI-compatible chat / completions answers (vLLM, TGI, llama.cpp, Ollama, OpenAI).

Each choice is one row (a request with `n = 3` yields three). The text is the message
content (or the completion's `text`; tool calls, and the legacy `function_call`, are
rendered as compact JSON so two answers calling the same tool agree, and their names are
kept in `tools` for the report's tool-name agreement). With token logprobs, the
confidence is the first token's probability (exp of its logprob) and `mean_logprob` the
mean over the tokens.
Streamed answers (`text/event-stream`, `data: {...}` lines) are reassembled first.
"""

from __future__ import annotations

import math
from dataclasses import replace

import orjson

from analysis.adapters.base import (
    KIND_TEXT,
    ContractField,
    ParsedOutput,
    Prediction,
    UnparseableOutput,
    is_number,
    load_json,
)
from analysis.adapters.rows import RequestRows
from common.settings import OutputSettings

_LOGPROB_FLOOR = -1000.0
EMPTY_CHOICES = "empty_choices"
INTERRUPTED = "interrupted_stream"
MAX_CALLS = 64  # tool calls kept per choice (hostile answers may list thousands)
MAX_NAME = 200  # characters of a tool name kept


class OpenAIAdapter(RequestRows):
    """Chat completions (`choices[].message`) and completions (`choices[].text`)."""

    name = "openai"

    def __init__(self, outputs: OutputSettings) -> None:
        self.outputs = outputs

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Lift an OpenAI-style answer, streamed or not."""
        try:
            if response_body.lstrip()[:5] == b"data:":
                doc, finished = _reassemble_stream(response_body)
                out = self.parse_json(doc)
                return out if finished else replace(out, flags=(*out.flags, INTERRUPTED))
            return self.parse_json(load_json(response_body, "response"))
        except UnparseableOutput as exc:
            if not exc.kind and not _utf8(response_body):
                raise UnparseableOutput(str(exc), kind="non_utf8") from None
            raise

    def parse_json(self, doc: object) -> ParsedOutput:
        """Lift an already decoded answer."""
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise UnparseableOutput("openai: no `choices` list")
        ordered = sorted(choices, key=_index)
        rows = tuple(_lift_choice(c) for c in ordered)
        obj = doc.get("object") if isinstance(doc, dict) else None
        # Missing logprobs show up as a missing `confidence` (analysis.compare).
        contract = (ContractField("choices", str(obj or ""), (len(rows),)),)
        flags = () if rows else (EMPTY_CHOICES,)
        return ParsedOutput(self.name, KIND_TEXT, rows, contract, flags=flags)


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _index(choice: dict[str, object]) -> int:
    index = choice.get("index", 0)
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def _lift_choice(choice: dict[str, object]) -> Prediction:
    logprobs = _token_logprobs(choice.get("logprobs"))
    finish = choice.get("finish_reason")
    return Prediction(
        text=_choice_text(choice),
        confidence=math.exp(logprobs[0]) if logprobs else None,
        mean_logprob=sum(logprobs) / len(logprobs) if logprobs else None,
        finish_reason=finish if isinstance(finish, str) else None,
        tools=tuple(_name(c) for c in _calls(_holder(choice))),
    )


def _holder(choice: dict[str, object]) -> dict[str, object]:
    """Where a choice keeps its calls: its `message`, or itself (a reassembled stream)."""
    message = choice.get("message")
    return message if isinstance(message, dict) else choice


def _calls(holder: dict[str, object]) -> list[object]:
    """`tool_calls` plus the legacy `function_call` (as a call), at most MAX_CALLS."""
    calls = holder.get("tool_calls")
    out = list(calls[:MAX_CALLS]) if isinstance(calls, list) else []
    legacy = holder.get("function_call")
    if isinstance(legacy, dict):
        out.append({"function": legacy})
    return out


def _name(call: object) -> str:
    fn = call.get("function") if isinstance(call, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    return str(name)[:MAX_NAME] if name is not None else ""


def _choice_text(choice: dict[str, object]) -> str:
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return _content_text(content) + _calls_json(message)
    text = choice.get("text")
    if isinstance(text, str):
        return text + _calls_json(choice)
    raise UnparseableOutput("openai: a choice has neither `message` nor `text`")


def _content_text(content: object) -> str:
    """Content is a string, null (tool calls only) or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(str(p.get("text", "")) for p in parts)
    return ""


def _calls_json(holder: dict[str, object]) -> str:
    calls = _calls(holder)
    return orjson.dumps([_call(c) for c in calls]).decode() if calls else ""


def _call(call: object) -> object:
    """A tool call without its random id: function name and arguments."""
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        fn = call["function"]
        return [fn.get("name"), fn.get("arguments")]
    return call


def _token_logprobs(logprobs: object) -> list[float]:
    """Token logprobs of a chat (`content: [{logprob}]`) or completion (`token_logprobs`)."""
    if not isinstance(logprobs, dict):
        return []
    content = logprobs.get("content")
    if isinstance(content, list):
        values = [t.get("logprob") for t in content if isinstance(t, dict)]
    else:
        values = logprobs.get("token_logprobs")  # type: ignore[assignment]
    if not isinstance(values, list):
        return []
    # Completions put null for the first token of an echoed prompt; skip non-numbers.
    # Clamp to [-1000, 0]: e^-1000 is 0 already, and sums stay finite.
    return [min(max(float(v), _LOGPROB_FLOOR), 0.0) for v in values if is_number(v)]


# -- streamed answers -----------------------------------------------------------------------


def _reassemble_stream(body: bytes) -> tuple[dict[str, object], bool]:
    """Merge `data:` chunks into one non-streamed answer (content, logprobs, finish
    reason), and whether the stream finished (`[DONE]` or a finish reason on every choice);
    one cut mid-way (a dropped connection) still lifts what arrived."""
    merged: dict[int, dict[str, object]] = {}
    obj = ""
    done = False
    for line in body.splitlines():
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        if line[5:].strip() == b"[DONE]":
            done = True
            continue
        chunk = load_json(line[5:].strip(), "stream chunk")
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            raise UnparseableOutput("openai: a stream chunk has no `choices` list")
        obj = str(chunk.get("object", obj))
        for choice in chunk["choices"]:
            if isinstance(choice, dict):
                _merge_chunk(merged.setdefault(_index(choice), _empty(_index(choice))), choice)
    if not merged:
        raise UnparseableOutput("openai: an empty stream")
    finished = done or all(c["finish_reason"] for c in merged.values())
    return {"object": obj, "choices": list(merged.values())}, finished


def _empty(index: int) -> dict[str, object]:
    return {"index": index, "text": "", "logprobs": {"content": []}, "finish_reason": None}


def _merge_chunk(target: dict[str, object], choice: dict[str, object]) -> None:
    delta = choice.get("delta")
    piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    if isinstance(piece, str):
        target["text"] = str(target["text"]) + piece
    logprobs = choice.get("logprobs")
    tokens = target["logprobs"]["content"]  # type: ignore[index]
    for value in _token_logprobs(logprobs):
        tokens.append({"logprob": value})
    if isinstance(choice.get("finish_reason"), str):
        target["finish_reason"] = choice["finish_reason"]
    if isinstance(delta, dict):
        _merge_calls(target, delta)


def _merge_calls(target: dict[str, object], delta: dict[str, object]) -> None:
    """Streamed `tool_calls` (pieces per call `index`) and legacy `function_call` pieces:
    the name arrives once, the arguments in pieces."""
    calls = delta.get("tool_calls")
    for piece in calls[:MAX_CALLS] if isinstance(calls, list) else []:
        if isinstance(piece, dict) and isinstance(piece.get("function"), dict):
            merged = target.setdefault("tool_calls", [])
            index = min(max(_index(piece), 0), len(merged))  # type: ignore[arg-type]
            if index == len(merged) == MAX_CALLS:
                continue
            if index == len(merged):
                merged.append({"function": {"name": None, "arguments": ""}})  # type: ignore[union-attr]
            _merge_function(merged[index]["function"], piece["function"])  # type: ignore[index]
    legacy = delta.get("function_call")
    if isinstance(legacy, dict):
        fn = target.setdefault("function_call", {"name": None, "arguments": ""})
        _merge_function(fn, legacy)  # type: ignore[arg-type]


def _merge_function(fn: dict[str, object], piece: dict[str, object]) -> None:
    if piece.get("name") is not None:
        fn["name"] = piece["name"]
    if isinstance(piece.get("arguments"), str):
        fn["arguments"] = str(fn["arguments"]) + piece["arguments"]
