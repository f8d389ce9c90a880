"""The admin API's route table and its OpenAPI 3.1 document, from one list.

Each operation is declared once in `OPERATIONS` (method, path, handler name, summary,
parameters, body and responses); `admin_routes` turns the table into Starlette routes
and `openapi_document` into the document served at `/openapi.json`, so the two cannot
drift apart. The web page's routes (analysis.ui) are HTML and not described here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from starlette.routing import Route

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d|w)?$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_DIVERGENT_PARAM = {"name": "divergent", "in": "query", "required": False,
                    "description": "only pairs whose answers differ",
                    "schema": {"type": "boolean", "default": False}}  # fmt: skip
_SLICE_PARAM = {"name": "slice", "in": "query", "required": False,
                "description": "only pairs with a row in this slice: feature=value (country=FR)",
                "schema": {"type": "string", "pattern": "^[^=]+=.*$"}}  # fmt: skip
_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the candidate's name",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}
_AUTH_ERRORS = {
    "401": _error("missing or wrong bearer token"),
    "429": _error(
        "too many failed token checks from this address (admin.auth_failures_per_minute)"
    ),
    "503": _error("no admin token configured, or Redis unavailable"),
}


@dataclass(frozen=True)
class Operation:
    """One method on one path."""

    method: str
    path: str
    handler: str
    summary: str
    responses: dict[str, Any]
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    write: bool = False
    tags: tuple[str, ...] = field(default=("admin",))

    def spec(self) -> dict[str, Any]:
        """This operation as an OpenAPI operation object."""
        responses = dict(self.responses)
        if self.write or self.path.startswith("/v1/"):
            responses = {**_AUTH_ERRORS, **responses}
        op: dict[str, Any] = {
            "operationId": self.handler,
            "summary": self.summary,
            "tags": list(self.tags),
            "responses": responses,
        }
        if self.parameters:
            op["parameters"] = list(self.parameters)
        if self.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.body}},
            }
        if self.write:
            op["security"] = [{"bearer": []}]
        elif self.path.startswith("/v1/"):
            op["security"] = [{}, {"bearer": []}]  # open unless admin.open_reads = false
        return op


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/healthz", "healthz", "Liveness: the process answers",
              {"200": _json({"type": "object"}, "alive")}, tags=("health",)),
    Operation("GET", "/readyz", "readyz", "Readiness: the primary is reachable",
              {"200": _json(_ref("Readiness"), "ready"),
               "503": _json(_ref("Readiness"), "the primary is unreachable")},
              tags=("health",)),
    Operation("GET", "/metrics", "metrics", "Prometheus metrics (text format)",
              {"200": {"description": "metrics",
                       "content": {"text/plain": {"schema": {"type": "string"}}}}},
              tags=("health",)),
    Operation("GET", "/openapi.json", "openapi", "This document",
              {"200": _json({"type": "object"}, "the OpenAPI document")}, tags=("health",)),
    Operation("GET", "/v1/candidates", "list_candidates",
              "The candidates and where traffic goes",
              {"200": _json(_ref("CandidateList"), "registry and routing")}),
    Operation("POST", "/v1/candidates", "add_candidate",
              "Register an HTTP candidate (mirroring starts within a second)",
              {"201": _json(_ref("Candidate"), "registered"),
               "400": _error("invalid candidate (ONNX ones come from the config file)"),
               "409": _error("the name is taken")},
              body=_ref("NewCandidate"), write=True),
    Operation("PATCH", "/v1/candidates/{name}", "patch_candidate",
              "Change sample, timeout or time box",
              {"200": _json(_ref("Candidate"), "changed"), "400": _error("invalid change"),
               "404": _error("no such candidate")},
              (_NAME_PARAM,), body=_ref("CandidatePatch"), write=True),
    Operation("DELETE", "/v1/candidates/{name}", "delete_candidate",
              "Remove a candidate (its evidence stays)",
              {"200": _json(_ref("Deleted"), "removed"), "404": _error("no such candidate"),
               "409": _error("it is the primary: roll back first")},
              (_NAME_PARAM,), write=True),
    Operation("GET", "/v1/candidates/{name}/report", "report", "The report over a window",
              {"200": _json(_ref("Report"), "the report (docs/architecture.md)"),
               "400": _error("invalid window"), "404": _error("no such candidate")},
              (_NAME_PARAM,
               {"name": "window", "in": "query", "required": False,
                "description": "30s, 15m, 1h, 2d ... or `trial` (default 1h)",
                "schema": {"type": "string", "default": "1h"}})),
    Operation("GET", "/v1/candidates/{name}/pairs", "pairs",
              "Recent pairs with both answers and copy-as-curl lines",
              {"200": _json(_ref("Pairs"), "recent pairs, newest first"),
               "400": _error("invalid parameter"), "404": _error("no such candidate")},
              (_NAME_PARAM,
               _DIVERGENT_PARAM,
               _SLICE_PARAM,
               {"name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}})),
    Operation("GET", "/v1/candidates/{name}/catalog", "catalog",
              "The failure catalog as JSONL (as `shadowtrial export` writes it), for"
              " `shadowtrial replay FILE --candidate NEXT --check`",
              {"200": {"description": "one replay line per case, oldest first",
                       "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
               "400": _error("invalid parameter"), "404": _error("no such candidate")},
              (_NAME_PARAM,
               _DIVERGENT_PARAM,
               _SLICE_PARAM,
               {"name": "flips", "in": "query", "required": False,
                "description": "only labelled negative flips (primary right, candidate wrong)",
                "schema": {"type": "boolean", "default": False}},
               {"name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 10000,
                           "default": 10000}})),
    Operation("POST", "/v1/candidates/{name}/promote", "promote",
              "Make the candidate the primary on every replica (gate first)",
              {"200": _json(_ref("Decision"), "promoted"), "400": _error("invalid parameter"),
               "404": _error("no such candidate"),
               "409": _json(_ref("Refusal"), "the gate refuses, or it cannot be the primary")},
              (_NAME_PARAM,
               {"name": "force", "in": "query", "required": False,
                "description": "promote whatever the gate says",
                "schema": {"type": "boolean", "default": False}}), write=True),
    Operation("POST", "/v1/candidates/{name}/canary", "canary",
              "Let the candidate answer a share of live requests, sticky by sample_by (gate "
              "first unless forced); weight 0 ends the canary",
              {"200": _json(_ref("Decision"), "canary weight set"),
               "400": _error("invalid weight"), "404": _error("no such candidate"),
               "409": _json(_ref("Refusal"), "the gate refuses, or it cannot answer clients")},
              (_NAME_PARAM,
               {"name": "force", "in": "query", "required": False,
                "description": "set the weight whatever the gate says",
                "schema": {"type": "boolean", "default": False}}),
              body={"oneOf": [
                  {"type": "object", "required": ["weight"], "additionalProperties": False,
                   "properties": {"weight": {"type": "number", "minimum": 0, "maximum": 1}}},
                  {"type": "object", "required": ["steps", "step_s"],
                   "additionalProperties": False,
                   "properties": {"steps": {"type": "array", "minItems": 1, "maxItems": 20,
                                            "items": {"type": "number", "exclusiveMinimum": 0,
                                                      "maximum": 1}},
                                  "step_s": {"type": "number", "minimum": 0,
                                             "maximum": 2592000},
                                  "min_pairs": {"type": "integer", "minimum": 0,
                                                "maximum": 10000000}}}]},
              write=True),
    Operation("POST", "/v1/candidates/{name}/reject", "reject",
              "Stop mirroring the candidate; keep its evidence",
              {"200": _json(_ref("Decision"), "rejected"), "404": _error("no such candidate"),
               "409": _error("it is the primary, or already rejected")},
              (_NAME_PARAM,), write=True),
    Operation("POST", "/v1/rollback", "rollback", "The previous primary becomes primary again",
              {"200": _json(_ref("Decision"), "rolled back"),
               "409": _error("nothing to roll back to")}, write=True),
    Operation("GET", "/v1/decisions", "decisions", "The audit log, newest first",
              {"200": _json(_ref("DecisionLog"), "decisions"), "400": _error("invalid limit")},
              ({"name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},)),
    Operation("POST", "/v1/feedback", "feedback", "Ground-truth labels, joined to pairs",
              {"200": _json(_ref("FeedbackResult"), "recorded"),
               "400": _error("invalid feedback")},
              body={"oneOf": [_ref("Label"),
                              {"type": "array", "items": _ref("Label"), "minItems": 1,
                               "maxItems": 10000}]}, write=True),
    Operation("GET", "/v1/watch", "watch",
              "The watch on the primary: a window's features, outputs and labels against a"
              " reference (docs/operating.md, Watch)",
              {"200": _json(_ref("WatchDocument"), "the watch document"),
               "400": _error("invalid window or reference")},
              ({"name": "window", "in": "query", "required": False,
                "description": "30s, 15m, 1h, 2d ... (default [watch] window)",
                "schema": {"type": "string", "pattern": DURATION_PATTERN}},
               {"name": "reference", "in": "query", "required": False,
                "description": "pinned, profile, day, week or <fromISO>/<toISO> (default"
                               " [watch] reference: the profile if any, else day)",
                "schema": {"type": "string"}})),
    Operation("PUT", "/v1/watch/reference", "watch_reference",
              "Pin the watch's reference window (audited)",
              {"200": _json({"type": "object"}, "pinned"), "400": _error("invalid window")},
              body={"type": "object", "required": ["from", "to"], "additionalProperties": False,
                    "properties": {"from": {"type": "string"}, "to": {"type": "string"}}},
              write=True),
    Operation("PUT", "/v1/watch/profile", "watch_profile",
              "Upload a training profile (`shadowtrial profile`) as the watch's reference"
              " (audited)",
              {"200": _json({"type": "object"}, "stored"), "400": _error("not a profile")},
              body={"type": "object"}, write=True),
)  # fmt: skip

_CANDIDATE_PROPS: dict[str, Any] = {
    "name": {"type": "string", "pattern": NAME_PATTERN},
    "url": {"type": ["string", "null"]},
    "onnx": {"type": ["string", "null"]},
    "sample": {"type": "number", "minimum": 0, "maximum": 1},
    "timeout_ms": {"type": "integer", "minimum": 1},
    "role": {"type": "string", "enum": ["candidate", "secondary"]},
    "state": {"type": "string", "enum": ["active", "rejected", "promoted", "ended"]},
    "started_at": {"type": "string"},
    "ends_at": {"type": ["string", "null"]},
    "source": {"type": "string", "enum": ["config", "api"]},
    "updated_at": {"type": "string"},
    "reason": {"type": "string"},
    "canary": {"type": "number", "minimum": 0, "maximum": 1},
    "canary_steps": {"type": "array", "items": {"type": "number"}},
    "canary_step_s": {"type": "number"},
    "canary_min_pairs": {"type": "integer"},
    "canary_since": {"type": "string"},
    "run": {"type": "string", "enum": ["proxy", "dispatcher"]},
}
_ROUTING = {
    "type": "object",
    "required": ["primary", "version"],
    "properties": {
        "primary": {"type": "string"},
        "primary_name": {"type": "string"},
        "previous": {"type": "string"},
        "previous_name": {"type": "string"},
        "version": {"type": "integer"},
    },
}
_GATE = {
    "type": "object",
    "required": ["verdict", "reasons"],
    "properties": {
        "verdict": {"type": "string", "enum": ["pass", "fail", "insufficient", "not checked"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
    },
}
_TIME_BOX = {
    "ends_at": {"type": ["string", "null"], "format": "date-time",
                "description": "ISO 8601 end of the trial (null: open-ended)"},
    "duration": {"type": ["string", "null"], "pattern": DURATION_PATTERN,
                 "description": "trial length from its start, e.g. 2h"},
}  # fmt: skip

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {}},
    },
    "Candidate": {
        "type": "object",
        "required": ["name", "sample", "timeout_ms", "role", "state"],
        "properties": _CANDIDATE_PROPS,
    },
    "NewCandidate": {
        "type": "object",
        "required": ["name", "url"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN},
            "url": {"type": "string", "pattern": r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/.*)?$"},
            "sample": {"type": "number", "minimum": 0, "maximum": 1},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600000},
            "role": {"type": "string", "enum": ["candidate", "secondary"]},
            "run": {
                "type": "string",
                "enum": ["proxy", "dispatcher"],
                "description": "who calls it: the proxy, or `shadowtrial dispatch`",
            },
            **_TIME_BOX,
        },
    },
    "CandidatePatch": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "sample": {"type": "number", "minimum": 0, "maximum": 1},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600000},
            **_TIME_BOX,
        },
    },
    "CandidateList": {
        "type": "object",
        "required": ["routing", "candidates"],
        "properties": {
            "routing": _ROUTING,
            "candidates": {"type": "array", "items": _ref("Candidate")},
        },
    },
    "Deleted": {
        "type": "object",
        "required": ["deleted"],
        "properties": {"deleted": {"type": "string"}, "version": {"type": "integer"}},
    },
    "Report": {
        "type": "object",
        "required": ["candidate", "window", "pairs", "agreement", "gate"],
        "properties": {"candidate": {"type": "string"}, "gate": _GATE},
    },
    "Pairs": {
        "type": "object",
        "required": ["candidate", "pairs"],
        "properties": {
            "candidate": {"type": "string"},
            "pairs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["request_id", "curl"],
                    "properties": {
                        "curl": {
                            "type": "object",
                            "required": ["primary", "candidate"],
                            "properties": {
                                "primary": {"type": "string"},
                                "candidate": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
            },
        },
    },
    "Decision": {
        "type": "object",
        "required": ["action", "actor", "version"],
        "properties": {
            "action": {"type": "string", "enum": ["promote", "reject", "rollback", "canary"]},
            "weight": {"type": "number"},
            "previous_weight": {"type": "number"},
            "steps": {"type": "array", "items": {"type": "number"}},
            "step_s": {"type": "number"},
            "min_pairs": {"type": "integer"},
            "candidate": {"type": "string"},
            "actor": {"type": "string"},
            "forced": {"type": "boolean"},
            "primary": {"type": "string"},
            "previous": {"type": "string"},
            "gate": _GATE,
            "version": {"type": "integer"},
        },
    },
    "Refusal": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {}, "gate": _GATE},
    },
    "DecisionLog": {
        "type": "object",
        "required": ["decisions"],
        "properties": {
            "decisions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "time", "actor", "action", "verdict", "reasons", "forced"],
                    "properties": {
                        "id": {"type": "string"},
                        "time": {"type": "string"},
                        "actor": {"type": "string"},
                        "action": {"type": "string"},
                        "candidate": {"type": "string"},
                        "outcome": {"type": "string", "enum": ["done", "refused"]},
                        "verdict": {"type": "string"},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                        "forced": {"type": "boolean"},
                        "evidence": {
                            "type": "array",
                            "description": "each deciding rule: outcome, anytime-valid or"
                            " not, and its bound or e-value",
                            "items": {"type": "object"},
                        },
                        "primary_before": {"type": "string"},
                        "primary_after": {"type": "string"},
                        "before": {
                            "type": "string",
                            "description": "add, patch, delete: the entry before (JSON)",
                        },
                        "after": {"type": "string", "description": "... and after"},
                    },
                },
            }
        },
    },
    "Label": {
        "type": "object",
        "required": ["request_id"],
        "oneOf": [{"required": ["label"]}, {"required": ["value"]}],
        "additionalProperties": False,
        "properties": {
            "request_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "label": {"type": ["string", "integer", "boolean"]},
            "value": {"type": "number", "description": "numeric ground truth (regression)"},
            "row": {"type": "integer", "minimum": 0, "maximum": 1000000},
        },
    },
    "FeedbackResult": {
        "type": "object",
        "required": ["recorded", "results"],
        "properties": {
            "recorded": {"type": "integer"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "request_id": {"type": "string"},
                        "candidates": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "watch": {
                            "description": "with [watch] on: the label's join to the "
                            "watched answer",
                            "enum": ["joined", "pending", "full", "expired", "none"],
                        },
                    },
                },
            },
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "primary"],
        "properties": {"ready": {"type": "boolean"}, "primary": {"type": "object"}},
    },
    "WatchDocument": {
        "type": "object",
        "description": "docs/operating.md, Watch; every string may come from traffic",
        "required": [
            "window",
            "reference",
            "requests",
            "rows",
            "unreadable",
            "features_over_cap",
            "flagged",
            "features",
            "outputs",
            "labels",
            "timeline",
            "accounting",
        ],
        "properties": {
            "window": {"type": "object", "required": ["from", "to", "seconds"]},
            "reference": {
                "type": "object",
                "required": ["kind", "from", "to", "requests", "available", "problem"],
                "properties": {
                    "kind": {"enum": ["pinned", "profile", "day", "week", "range"]},
                    "available": {"type": "boolean"},
                },
            },
            "requests": {"type": "integer"},
            "rows": {"type": "integer"},
            "unreadable": {"type": "integer"},
            "features_over_cap": {"type": "integer"},
            "flagged": {"type": "array", "items": {"type": "string"}},
            "features": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "feature",
                        "kind",
                        "drift",
                        "p_adj",
                        "flagged",
                        "unseen_rate",
                        "out_of_range_rate",
                        "missing_rate",
                        "missing_rate_reference",
                        "count",
                        "first_seen",
                        "chart",
                    ],
                    "properties": {
                        "kind": {"enum": ["numeric", "categorical"]},
                        "drift": {"type": ["number", "null"]},
                        "p_adj": {"type": ["number", "null"]},
                        "flagged": {"type": "boolean"},
                    },
                },
            },
            "outputs": {
                "type": "object",
                "properties": {"kind": {"enum": ["classification", "regression", "unknown"]}},
            },
            "labels": {
                "type": "object",
                "required": [
                    "labelled",
                    "accuracy",
                    "low",
                    "high",
                    "per_class_recall",
                    "over_time",
                ],
            },
            "timeline": {"type": "array", "items": {"type": "object"}},
            "accounting": {
                "type": "object",
                "required": ["captured", "folded", "unreadable", "dropped"],
            },
        },
    },
}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API (built once)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = op.spec()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shadowtrial admin API",
            "version": "1",
            "description": "Reports and decisions for models on trial. Every POST, PATCH and"
            " DELETE needs `Authorization: Bearer <token>` (the token comes from the"
            " environment variable named by [admin] token_env). Errors are"
            ' {"error": ..., "detail": ...}.',
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def admin_routes(handlers: Mapping[str, Callable[..., Any]]) -> list[Route]:
    """Starlette routes for every operation, from its handler name."""
    return [Route(op.path, handlers[op.handler], methods=[op.method]) for op in OPERATIONS]
