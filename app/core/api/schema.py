"""The OpenAPI 3 document of the local API: served at `GET /v1/openapi.json` and kept in docs/openapi.json.

Built here, in code next to the server, so the two cannot drift apart: a test compares docs/openapi.json with
`openapi_document()`, and the fuzz test (tests/core/api/test_api_fuzz.py) drives every operation from it.
Regenerate the file with `python -c "from app.core.api.schema import write; write()"`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app import __version__
from app.core.atomic import write_atomic
from app.core.residency.reservations import (
    DEFAULT_TTL_S,
    MAX_CLIENT_CHARS,
    MAX_HOLDER_CHARS,
    MAX_TTL_S,
    MAX_WAIT_S,
)

MAX_LONG_POLL_S = 60.0
DOCS_FILE = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"

_NULLABLE_INT = {"type": "integer", "nullable": True}
_NULLABLE_NUMBER = {"type": "number", "nullable": True}

PROBLEM = {
    "type": "object",
    "description": "Every error answer (content type application/problem+json).",
    "required": ["error", "message", "details", "suggestions", "retry_after"],
    "properties": {
        "error": {
            "type": "string",
            "description": "Machine-readable code: insufficient_vram, cuda_allocation_failed, invalid_input, "
            "unauthorized, not_found, payload_too_large, unsupported_media_type, queue_full, "
            "gpu_unavailable, starting, method_not_allowed, ...",
        },
        "message": {"type": "string", "description": "For people: what happened, with the facts."},
        "details": {"type": "object", "additionalProperties": True},
        "suggestions": {"type": "array", "items": {"type": "string"}},
        "retry_after": {**_NULLABLE_NUMBER, "description": "Seconds to wait before retrying; null: do not."},
        "retriable": {"type": "boolean"},
        "need_bytes": _NULLABLE_INT,
        "available_bytes": _NULLABLE_INT,
    },
    "additionalProperties": True,
}

MODEL = {
    "type": "object",
    "required": ["name", "gpu", "size_bytes", "state"],
    "properties": {
        "name": {"type": "string"},
        "gpu": {"type": "integer"},
        "size_bytes": _NULLABLE_INT,
        "state": {
            "type": "string",
            "enum": ["unloaded", "loading", "resident", "evicted", "waiting", "failed"],
        },
        "digest": {"type": "string", "nullable": True},
        "holder": {"type": "string"},
        "variants": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": True,
}

RESERVATION = {
    "type": "object",
    "required": ["id", "gpu", "bytes", "holder", "ttl_s", "state", "position"],
    "properties": {
        "id": {"type": "string"},
        "gpu": {"type": "integer"},
        "bytes": {"type": "integer"},
        "holder": {"type": "string"},
        "ttl_s": {"type": "number"},
        "state": {
            "type": "string",
            "enum": [
                "waiting",
                "granted",
                "allocated",
                "settled",
                "released",
                "expired",
                "timed_out",
                "cancelled",
            ],
        },
        "position": {**_NULLABLE_INT, "description": "Place in the GPU's queue (1 = next) while waiting."},
        "waited_s": {"type": "number"},
        "wait_remaining_s": _NULLABLE_NUMBER,
        "expires_in_s": _NULLABLE_NUMBER,
        "client": {
            "type": "string",
            "description": "Who took it, for the per-client caps: `unix:pid=N` (Unix socket) or "
            "`tcp:ADDRESS`, then `/NAME` when the request named a client.",
        },
    },
    "additionalProperties": True,
}

RESERVATION_REQUEST = {
    "type": "object",
    "required": ["gpu", "bytes", "holder"],
    "properties": {
        "gpu": {"type": "integer", "minimum": 0, "description": "GPU index, as in nvidia-smi."},
        "bytes": {"type": "integer", "minimum": 1, "description": "At most the GPU's total VRAM."},
        "holder": {"type": "string", "minLength": 1, "maxLength": MAX_HOLDER_CHARS},
        "ttl_s": {
            "type": "number",
            "exclusiveMinimum": True,
            "minimum": 0,
            "maximum": MAX_TTL_S,
            "default": DEFAULT_TTL_S,
            "nullable": True,
            "description": "Dropped after this long unless marked allocated or released first (null: the "
            "default).",
        },
        "wait_s": {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_WAIT_S,
            "default": 0,
            "nullable": True,
            "description": "Queue (FIFO per GPU) for up to this long when it does not fit now (null or 0: "
            "answer at once).",
        },
        "client": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CLIENT_CHARS,
            "nullable": True,
            "description": "A name for the caller, counted with its address for the per-client caps "
            "(clients that share an address, e.g. 127.0.0.1, then do not share a cap).",
        },
    },
    "additionalProperties": False,
}

CONTROL_RESULT = {
    "type": "object",
    "required": ["ok", "state", "reasons"],
    "properties": {
        "ok": {"type": "boolean"},
        "state": {"type": "string"},
        "reasons": {"type": "array", "items": {"type": "string"}},
    },
}

STATUS = {
    "type": "object",
    "description": "The status document (docs/status-json.md) plus the API's reservations and queue.",
    "required": ["schema_version", "backend", "state", "gpus", "models", "events", "queue", "reservations"],
    "properties": {
        "schema_version": {"type": "integer"},
        "backend": {"type": "string"},
        "state": {"type": "string", "nullable": True},
        "gpus": {"type": "array", "items": {"type": "object"}},
        "models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        "events": {"type": "array", "items": {"type": "object"}},
        "queue": {"type": "array", "items": {"$ref": "#/components/schemas/Reservation"}},
        "reservations": {"type": "array", "items": {"type": "object"}},
    },
}


DISCOVERED = {
    "type": "object",
    "required": ["enabled", "last_run_at", "apps"],
    "properties": {
        "enabled": {"type": "boolean", "description": "false in a simulation: nothing is probed."},
        "last_run_at": {**_NULLABLE_NUMBER, "description": "Unix seconds; null before the first run."},
        "apps": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["kind", "name", "url", "port", "managed", "found_at"],
                "properties": {
                    "kind": {"type": "string", "description": "As in a [[servers]] entry, e.g. comfyui."},
                    "name": {"type": "string", "description": "For people, e.g. ComfyUI."},
                    "url": {"type": "string", "description": "http://127.0.0.1:PORT"},
                    "port": {"type": "integer"},
                    "managed": {"type": "boolean", "description": "A [[servers]] entry names its port."},
                    "found_at": {"type": "number", "description": "Unix seconds; first found."},
                },
            },
        },
    },
}


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER_HEADER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds (RFC 9110)."}}
_LOCATION_HEADER = {"Location": {"schema": {"type": "string"}, "description": "The reservation's URL."}}
_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "404": {"$ref": "#/components/responses/NotFound"},
    "405": {"$ref": "#/components/responses/MethodNotAllowed"},
    "413": {"$ref": "#/components/responses/PayloadTooLarge"},
    "415": {"$ref": "#/components/responses/UnsupportedMediaType"},
    "503": {"$ref": "#/components/responses/Unavailable"},
    "504": {"$ref": "#/components/responses/EngineTimeout"},
}
_OPTIONAL_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
}
_MODEL_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_RESERVATION_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _control(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": _OPTIONAL_BODY,
            "responses": {"200": _json("Done; the engine's state after it.", CONTROL_RESULT), **_ERRORS},
        }
    }


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.0 document."""
    insufficient = {
        **_problem_response("insufficient_vram (need_bytes, available_bytes, suggestions, retry_after)"),
        "headers": _RETRY_AFTER_HEADER,
    }
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness; needs no token.",
                "security": [],
                "responses": {
                    "200": _json(
                        "Alive.",
                        {
                            "type": "object",
                            "required": ["ok", "version", "state"],
                            "properties": {
                                "ok": {"type": "boolean"},
                                "version": {"type": "string"},
                                "state": {"type": "string"},
                            },
                        },
                    )
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format); needs no token.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": {"$ref": "#/components/responses/NotFound"},
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {"200": _json("The OpenAPI document.", {"type": "object"}), **_ERRORS},
            }
        },
        "/v1/status": {
            "get": {
                "summary": "The status document, with the reservation queue.",
                "responses": {"200": _json("Status.", {"$ref": "#/components/schemas/Status"}), **_ERRORS},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "Configured models and their state.",
                "responses": {
                    "200": _json(
                        "Models.",
                        {
                            "type": "object",
                            "required": ["models"],
                            "properties": {
                                "models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}
                            },
                        },
                    ),
                    **_ERRORS,
                },
            }
        },
        "/v1/discovered": {
            "get": {
                "summary": "AI apps that discovery found answering on loopback, managed or not.",
                "responses": {"200": _json("What the last discovery run found.", DISCOVERED), **_ERRORS},
            }
        },
        "/v1/models/{name}/load": {
            "parameters": [_MODEL_NAME],
            "post": {
                "summary": "Load a configured model (admission first; the load runs in the background).",
                "requestBody": _OPTIONAL_BODY,
                "responses": {
                    "202": _json("Admitted or already resident.", {"type": "object"}),
                    "409": _problem_response(
                        "Refused by the engine's state (paused, evicted for a game, ...)."
                    ),
                    "507": insufficient,
                    **_ERRORS,
                },
            },
        },
        "/v1/models/{name}/unload": {
            "parameters": [_MODEL_NAME],
            "post": {
                "summary": "Unload a model (it is not restored on resume).",
                "requestBody": _OPTIONAL_BODY,
                "responses": {"200": _json("Unloaded.", {"type": "object"}), **_ERRORS},
            },
        },
        "/v1/models/{name}/verify": {
            "parameters": [_MODEL_NAME],
            "post": {
                "summary": "Recompute the chunk digests of what is in VRAM; compare with the manifest.",
                "requestBody": _OPTIONAL_BODY,
                "responses": {
                    "200": _json("VRAM matches the manifest.", {"type": "object"}),
                    "409": _problem_response(
                        "seal_verification_failed: damaged chunks named in details.damaged_chunks."
                    ),
                    **_ERRORS,
                },
            },
        },
        "/v1/pause": _control("Free all VRAM and hold nothing until resume."),
        "/v1/resume": _control("Lift a pause."),
        "/v1/evict": _control("Free all VRAM now; models come back when the GPU is free."),
        "/v1/show": _control("Ask the tray app to show its window (single-instance hand-off)."),
        "/v1/reservations": {
            "get": {
                "summary": "API reservations that are granted, allocated or waiting.",
                "responses": {
                    "200": _json(
                        "Reservations.",
                        {
                            "type": "object",
                            "required": ["reservations"],
                            "properties": {
                                "reservations": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Reservation"},
                                }
                            },
                        },
                    ),
                    **_ERRORS,
                },
            },
            "post": {
                "summary": "Reserve VRAM before allocating it; counted in admission like our own loads.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ReservationRequest"}}
                    },
                },
                "responses": {
                    "201": _json("Granted.", {"$ref": "#/components/schemas/Reservation"}, _LOCATION_HEADER),
                    "202": _json(
                        "Queued (wait_s > 0); poll GET /v1/reservations/{id}?wait_s=.",
                        {"$ref": "#/components/schemas/Reservation"},
                        _LOCATION_HEADER,
                    ),
                    "429": _problem_response(
                        "queue_full, too_many_reservations or too_many_reservations_for_client"
                    ),
                    "507": insufficient,
                    **_ERRORS,
                },
            },
        },
        "/v1/reservations/{id}": {
            "parameters": [_RESERVATION_ID],
            "get": {
                "summary": "A reservation's state; with wait_s, waits while it is queued.",
                "parameters": [
                    {
                        "name": "wait_s",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_LONG_POLL_S},
                    }
                ],
                "responses": {
                    "200": _json("The reservation.", {"$ref": "#/components/schemas/Reservation"}),
                    "507": {
                        **insufficient,
                        "description": "Its wait in the queue ran out (state timed_out).",
                    },
                    **_ERRORS,
                },
            },
            "delete": {
                "summary": "Release it (or leave the queue). Releasing an ended one changes nothing.",
                "responses": {
                    "200": _json("Released.", {"$ref": "#/components/schemas/Reservation"}),
                    **_ERRORS,
                },
            },
        },
        "/v1/reservations/{id}/allocated": {
            "parameters": [_RESERVATION_ID],
            "post": {
                "summary": "Say the bytes are allocated now: counted until a later NVML sample shows them.",
                "requestBody": _OPTIONAL_BODY,
                "responses": {
                    "200": _json("Marked.", {"$ref": "#/components/schemas/Reservation"}),
                    **_ERRORS,
                },
            },
        },
    }
    responses = {
        "BadRequest": _problem_response("invalid_input: malformed JSON, a bad field, unknown model or GPU."),
        "Unauthorized": _problem_response("Missing or wrong bearer token."),
        "NotFound": _problem_response("No such path or reservation."),
        "MethodNotAllowed": _problem_response("The path exists, the method does not."),
        "PayloadTooLarge": _problem_response("Request body over 64 KiB."),
        "UnsupportedMediaType": _problem_response("A body that is not application/json."),
        "Unavailable": _problem_response("The engine has not sampled yet, or the GPU cannot be measured."),
        "EngineTimeout": _problem_response("The engine did not answer in time."),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "VRAM Steward local API",
            "version": __version__,
            "description": "Loopback-only control API. Every path except /healthz and /metrics needs "
            "'Authorization: Bearer <token>' with the token from the state dir's api-token file (0600, new "
            "at every start). Every path answers 421 unless the Host header is 127.0.0.1, localhost or "
            "[::1] with the port. Errors are problem JSON. See docs/api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:8765"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": PROBLEM,
                "Model": MODEL,
                "Reservation": RESERVATION,
                "ReservationRequest": RESERVATION_REQUEST,
                "Status": STATUS,
            },
            "responses": responses,
        },
    }


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=False) + "\n"


def write(path: Path = DOCS_FILE) -> None:
    write_atomic(path, render())
