"""The HTTP API's OpenAPI 3.1 description, served at ``/api/openapi.json``.

Kept beside the handlers as data; a test checks that every route the app serves
is described here and nothing else is.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "An error: `code` is machine-readable, `message` says what and why.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _json(schema: str, what: str) -> dict[str, Any]:
    return {
        "description": what,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _param(name: str, where: str, schema: dict[str, Any], what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": what,
    }


_PROJECT = _param("project", "path", {"type": "string"}, "Project name.")
_RUN = _param("run", "path", {"type": "string"}, "Run id.")
_RUN_NO = _param(
    "run_no",
    "query",
    {"type": "integer", "minimum": 0},
    "An archived (rewound) timeline of this id, by its internal number.",
)
_KEYS = _param(
    "keys",
    "query",
    {"type": "string"},
    "Comma-separated metric names; rows holding any of them. Default: every key.",
)
_STEP = {"type": "integer", "minimum": 0}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "stepline",
        "version": "1",
        "description": (
            "Read-only JSON API of a stepline daemon. History is fork-resolved: a "
            "fork's rows are its parent's up to the fork step, then its own. NaN and "
            "infinities are written as bare NaN, Infinity and -Infinity (as W&B does)."
        ),
    },
    "paths": {
        "/api/projects": {
            "get": {
                "summary": "Projects, with how many runs each holds.",
                "responses": {"200": _json("Projects", "The projects.")},
            }
        },
        "/api/projects/{project}/runs": {
            "get": {
                "summary": "The runs of a project (current timeline of each id).",
                "parameters": [_PROJECT],
                "responses": {"200": _json("Runs", "The runs."), "404": _ERROR, "400": _ERROR},
            }
        },
        "/api/projects/{project}/tree": {
            "get": {
                "summary": "Every timeline of a project, archived ones too, with parent pointers.",
                "parameters": [_PROJECT],
                "responses": {"200": _json("Tree", "The fork forest."), "404": _ERROR},
            }
        },
        "/api/projects/{project}/runs/{run}": {
            "get": {
                "summary": "One run: also config, lineage, children and archived timelines.",
                "parameters": [_PROJECT, _RUN, _RUN_NO],
                "responses": {"200": _json("RunDetail", "The run."), "404": _ERROR},
            }
        },
        "/api/projects/{project}/runs/{run}/history": {
            "get": {
                "summary": "History: exact pages, a chart downsample, or CSV.",
                "parameters": [
                    _PROJECT,
                    _RUN,
                    _RUN_NO,
                    _KEYS,
                    _param("min_step", "query", _STEP, "First step (inclusive)."),
                    _param("max_step", "query", _STEP, "Last step (exclusive)."),
                    _param(
                        "samples",
                        "query",
                        {"type": "integer", "minimum": 2, "maximum": 100000},
                        "Downsample to at most this many rows: first and last kept; with "
                        "keys, each key's min and max per step bucket (min/max decimation).",
                    ),
                    _param(
                        "include_parent",
                        "query",
                        {"type": "boolean", "default": True},
                        "false: the run's own rows only.",
                    ),
                    _param(
                        "format",
                        "query",
                        {"type": "string", "enum": ["json", "columns", "csv"], "default": "json"},
                        "json: a list of rows; columns: one array per key; csv: streamed.",
                    ),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 100000, "default": 10000},
                        "Rows per exact page; follow `next` (as min_step) for the rest.",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "Rows (json), columns, or CSV text.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Rows"},
                                        {"$ref": "#/components/schemas/Columns"},
                                    ]
                                }
                            },
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _ERROR,
                    "404": _ERROR,
                },
            }
        },
        "/api/projects/{project}/runs/{run}/stream": {
            "get": {
                "summary": "Live rows as Server-Sent Events (`rows` and `state` events).",
                "description": (
                    "Sends a `state` event first, then `rows` events (`id:` is the last "
                    "step sent) as rows commit, `state` events when the run changes, and "
                    "a keepalive comment every 15 s. Without `after` or Last-Event-ID, "
                    "only rows committed after the stream opens are sent."
                ),
                "parameters": [
                    _PROJECT,
                    _RUN,
                    _RUN_NO,
                    _KEYS,
                    _param(
                        "after",
                        "query",
                        {"type": "integer", "minimum": -1},
                        "Send rows with steps above this one.",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "An event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _ERROR,
                    "404": _ERROR,
                },
            }
        },
        "/api/status": {
            "get": {
                "summary": "Which store this serves (a node's, or the cluster's), and for a "
                "node that replicates, its replication lag.",
                "responses": {
                    "200": {
                        "description": "store: node or cluster; cluster: the replication "
                        "status (url, node, lag_rows, lag_seconds, connected, last_error) "
                        "or null",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This description.",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
            "Projects": {
                "type": "object",
                "properties": {
                    "projects": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "runs": {"type": "integer"},
                                "updated": {"type": "number", "description": "Unix time."},
                            },
                        },
                    }
                },
            },
            "Ref": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "run_no": {"type": "integer"},
                    "step": {"type": "integer"},
                    "state": {"type": "string"},
                },
            },
            "Run": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "run_no": {"type": "integer"},
                    "project": {"type": "string"},
                    "name": {"type": ["string", "null"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "state": {
                        "type": "string",
                        "enum": ["running", "finished", "failed", "crashed"],
                    },
                    "created": {"type": "number", "description": "Unix time, seconds."},
                    "updated": {"type": "number"},
                    "last_step": {"type": "integer", "description": "-1 before any row."},
                    "rows": {"type": "integer"},
                    "dropped": {"type": "integer"},
                    "exit_code": {"type": ["integer", "null"]},
                    "archived_by": {"type": ["integer", "null"]},
                    "parent": {
                        "oneOf": [{"$ref": "#/components/schemas/Ref"}, {"type": "null"}],
                        "description": "The run this one forks (or rewinds) and the step.",
                    },
                    "summary": {"type": "object"},
                },
            },
            "Runs": {
                "type": "object",
                "properties": {
                    "project": {"type": "string"},
                    "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
                },
            },
            "RunDetail": {
                "allOf": [
                    {"$ref": "#/components/schemas/Run"},
                    {
                        "type": "object",
                        "properties": {
                            "config": {"type": "object"},
                            "metrics": {"type": "object"},
                            "client": {"type": ["string", "null"]},
                            "lineage": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Ref"},
                                "description": "Ancestors, nearest first.",
                            },
                            "children": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Ref"},
                            },
                            "archived": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Ref"},
                                "description": "Timelines of this id that rewinds replaced, "
                                "newest first; step: where the newer one branched.",
                            },
                        },
                    },
                ]
            },
            "Tree": {
                "type": "object",
                "properties": {
                    "nodes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "run_no": {"type": "integer"},
                                "name": {"type": ["string", "null"]},
                                "state": {"type": "string"},
                                "parent_run_no": {"type": ["integer", "null"]},
                                "step": {"type": ["integer", "null"]},
                                "archived_by": {"type": ["integer", "null"]},
                                "last_step": {"type": "integer"},
                                "created": {"type": "number"},
                            },
                        },
                    }
                },
            },
            "Rows": {
                "type": "object",
                "properties": {
                    "rows": {"type": "array", "items": {"type": "object"}},
                    "next": {
                        "type": ["integer", "null"],
                        "description": "Where the next exact page starts (pass as min_step).",
                    },
                },
            },
            "Columns": {
                "type": "object",
                "description": "`_step` and one array per key (null where a row lacks it).",
                "properties": {
                    "_step": {"type": "array", "items": {"type": "integer"}},
                    "next": {"type": ["integer", "null"]},
                },
                "additionalProperties": {"type": "array"},
            },
        }
    },
}
