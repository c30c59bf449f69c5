"""The REST API's OpenAPI 3.1 document (served at /openapi.json).

Written out by hand next to the routes in server.py; tests/manager checks
that both name the same operations, validates the document, and drives the
server through a client generated from it.
"""

from __future__ import annotations

from typing import Any

VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Bad request (bad JSON, bad field, bad path)"),
    "401": _json(_ref("Error"), "Missing or wrong bearer token"),
    "404": _json(_ref("Error"), "No such VM"),
    "409": _json(_ref("Error"), "The VM's state does not allow it"),
}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_GUEST_ERRORS = {**_ERRORS, "503": _json(_ref("Error"), "No guest agent answers in the VM"),
                 "504": _json(_ref("Error"), "The command timed out")}  # fmt: skip


def _op(op_id: str, summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, errors: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": {**responses, **(errors or _ERRORS)}}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "CreateVM": {
        "type": "object",
        "description": "One of image (default \"debian\"; \"busybox\" boots the pulled default guest), "
                       "template or snapshot (absolute directory).",
        "properties": {
            "image": {"type": "string"},
            "template": {"type": "string"},
            "snapshot": {"type": "string"},
            "name": {"type": "string"},
            "memory": {"type": "string", "description": "guest RAM, e.g. 512M (a restore keeps the snapshot's)"},
            "cpus": {"type": "integer", "minimum": 1, "maximum": 8},
            "network": {"type": "boolean", "description": "user-mode NAT (default off)"},
            "allow": {"type": "array", "items": {"type": "string"},
                      "description": "with network: the only destinations (A.B.C.D[:PORT]) the guest may reach"},
            "ttl": {"type": "number", "description": "seconds until the VM is killed and its disks discarded"},
            "env": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "environment of every command run in the VM"},
            "host_memory": {"type": "string", "description": "host memory cap of the VM process (default: RAM + 512M)"},
            "cpu_share": {"type": "number", "description": "host CPUs the VM may use (0: no limit)"},
            "display": {"type": ["boolean", "string"],
                        "description": "a screen, keyboard and tablet on a web page (true; or \"WxH\" for a boot "
                                       "of busybox); its URL is the VM's display"},
        },
        "additionalProperties": False,
    },
    "Limits": {
        "type": "object",
        "properties": {
            "mechanism": {"type": "string", "enum": ["cgroup2", "cgroup1", "rlimit", "none"]},
            "host_memory": {"type": ["integer", "null"]},
            "cpu_share": {"type": ["number", "null"]},
            "groups": {"type": "array", "items": {"type": "string"}},
        },
    },
    "VM": {
        "type": "object",
        "required": ["name", "state", "pid"],
        "properties": {
            "name": {"type": "string"},
            "state": {"type": "string", "enum": ["starting", "running", "paused", "deleting", "exited"]},
            "pid": {"type": "integer"},
            "source": {"type": "object", "additionalProperties": {"type": "string"}},
            "memory": {"type": ["integer", "null"]},
            "cpus": {"type": ["integer", "null"]},
            "network": {"type": "boolean"},
            "allow": {"type": "array", "items": {"type": "string"}},
            "env": {"type": "array", "items": {"type": "string"}, "description": "names only"},
            "created": {"type": "number"},
            "expires": {"type": ["number", "null"]},
            "ttl_left": {"type": ["number", "null"]},
            "vsock": {"type": ["string", "null"]},
            "display": {"type": ["string", "null"],
                        "description": "URL of the VM's screen and serial console page (behind the manager's token)"},
            "limits": _ref("Limits"),
        },
    },
    "VMList": {"type": "object", "required": ["vms"], "properties": {"vms": {"type": "array", "items": _ref("VM")}}},
    "Deleted": {
        "type": "object",
        "required": ["name", "deleted"],
        "properties": {"name": {"type": "string"}, "deleted": {"type": "boolean"},
                       "exit_code": {"type": ["integer", "null"]}, "reason": {"type": "string"}},  # fmt: skip
    },
    "Metrics": {
        "type": "object",
        "required": ["name", "state"],
        "properties": {
            "name": {"type": "string"},
            "state": {"type": "string"},
            "cpu_seconds": {"type": ["number", "null"], "description": "host CPU time of the VM process"},
            "rss_bytes": {"type": ["integer", "null"]},
            "pss_bytes": {"type": ["integer", "null"], "description": "proportional set size (shared pages split)"},
            "threads": {"type": ["integer", "null"]},
            "guest_uptime": {"type": ["number", "null"], "description": "guest clock seconds since its boot"},
            "cgroup_memory_bytes": {"type": "integer"},
        },
    },
    "SnapshotRequest": {"type": "object", "required": ["dir"], "properties": {"dir": {"type": "string"}}},
    "Snapshot": {"type": "object", "properties": {"path": {"type": "string"}, "seconds": {"type": "number"},
                                                  "total_bytes": {"type": "integer"}}},  # fmt: skip
    "ExecRequest": {
        "type": "object",
        "required": ["command"],
        "properties": {
            "command": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                        "description": "argv, or a string run by /bin/sh -c"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "cwd": {"type": "string"},
            "stdin": {"type": "string"},
            "stdin_base64": {"type": "boolean"},
            "timeout": {"type": "number"},
            "stream": {"type": "boolean", "default": True,
                       "description": "true: chunked NDJSON events as they come; false: one ExecResult"},
        },
    },
    "ExecResult": {
        "type": "object",
        "properties": {"stdout": {"type": "string"}, "stderr": {"type": "string"},
                       "exit_code": {"type": ["integer", "null"]}, "signal": {"type": ["integer", "null"]}},  # fmt: skip
    },
    "ExecEvent": {
        "type": "object",
        "description": "one line of the NDJSON stream: stdout/stderr (data: base64), exit, or error",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["stdout", "stderr", "exit", "error"]},
            "data": {"type": "string"},
            "exit_code": {"type": ["integer", "null"]},
            "signal": {"type": ["integer", "null"]},
            "kind": {"type": "string"},
            "error": {"type": "string"},
        },
    },
    "Uploaded": {"type": "object", "properties": {"path": {"type": "string"}, "bytes": {"type": "integer"}}},
    "Health": {"type": "object", "properties": {"ok": {"type": "boolean"}, "vms": {"type": "integer"},
                                                "max_vms": {"type": "integer"}, "limits": {"type": "string"},
                                                "pid": {"type": "integer"}}},  # fmt: skip
}

_PATH_PARAM = [{"name": "path", "in": "query", "required": True, "schema": {"type": "string"},
                "description": "absolute path in the guest"}]  # fmt: skip


def document() -> dict[str, Any]:
    vm = _json(_ref("VM"), "The VM")
    return {
        "openapi": "3.1.0",
        "info": {"title": "pocketvm manager", "version": VERSION,
                 "description": "Sandbox VMs: create, list, delete, pause, snapshot, metrics, exec, files."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
        },
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": _op("health", "The manager is up", {"200": _json(_ref("Health"), "Status")})},
            "/vms": {
                "get": _op("list_vms", "List the VMs", {"200": _json(_ref("VMList"), "The VMs")}),
                "post": _op("create_vm", "Create a VM (returns once it runs)", {
                    "201": vm, "429": _json(_ref("Error"), "Too many VMs")},
                    body={"required": True, "content": {"application/json": {"schema": _ref("CreateVM")}}}),
            },
            "/vms/{name}": {
                "get": _op("get_vm", "One VM", {"200": vm}, params=_NAME),
                "delete": _op("delete_vm", "Kill the VM and discard its disks",
                              {"200": _json(_ref("Deleted"), "Deleted")}, params=_NAME),
            },
            "/vms/{name}/pause": {"post": _op("pause_vm", "Pause (guest clock stops)", {"200": vm}, params=_NAME)},
            "/vms/{name}/resume": {"post": _op("resume_vm", "Resume", {"200": vm}, params=_NAME)},
            "/vms/{name}/snapshot": {"post": _op(
                "snapshot_vm", "Save the VM to a new directory (it keeps running)",
                {"200": _json(_ref("Snapshot"), "Saved")}, params=_NAME,
                body={"required": True, "content": {"application/json": {"schema": _ref("SnapshotRequest")}}})},
            "/vms/{name}/metrics": {"get": _op("vm_metrics", "Host CPU time, RSS, PSS, guest uptime",
                                               {"200": _json(_ref("Metrics"), "Metrics")}, params=_NAME)},
            "/vms/{name}/exec": {"post": _op(
                "exec_in_vm", "Run a command in the VM",
                {"200": {"description": "NDJSON events (stream: true) or one result (stream: false)",
                         "content": {"application/x-ndjson": {"schema": _ref("ExecEvent")},
                                     "application/json": {"schema": _ref("ExecResult")}}}},
                params=_NAME, errors=_GUEST_ERRORS,
                body={"required": True, "content": {"application/json": {"schema": _ref("ExecRequest")}}})},
            "/vms/{name}/files": {
                "get": _op("download_file", "Read a guest file (raw bytes, chunked)",
                           {"200": {"description": "The file", "content": {"application/octet-stream": {
                               "schema": {"type": "string", "format": "binary"}}}}},
                           params=_NAME + _PATH_PARAM, errors=_GUEST_ERRORS),
                "put": _op("upload_file", "Create or replace a guest file from the raw body",
                           {"200": _json(_ref("Uploaded"), "Written")},
                           params=_NAME + _PATH_PARAM + [{"name": "mode", "in": "query", "required": False,
                                                          "schema": {"type": "string", "default": "644"}}],
                           errors=_GUEST_ERRORS,
                           body={"required": True, "content": {"application/octet-stream": {
                               "schema": {"type": "string", "format": "binary"}}}}),
            },
        },
    }
