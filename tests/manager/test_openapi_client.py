"""The OpenAPI document is valid, names every route the server has, and a
client generated from it by openapi-python-client drives the server."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pocketvm.manager.openapi import document
from pocketvm.manager.server import make_app


def test_the_document_is_valid_and_matches_the_routes(tmp_path):
    validator = pytest.importorskip("openapi_spec_validator")
    doc = document()
    validator.validate(doc)

    class NoManager:
        max_vms = 1

    app = make_app(NoManager(), "x" * 20)  # type: ignore[arg-type]
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes - {("get", "/openapi.json")} == documented


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The `pocketvm_client` package generated from the document."""
    tool = Path(sys.executable).parent / "openapi-python-client"
    if not tool.exists():
        pytest.skip("openapi-python-client is not installed (pip install -e .[test])")
    out = tmp_path_factory.mktemp("openapi")
    spec = out / "openapi.json"
    spec.write_text(json.dumps(document()))
    env = {**os.environ, "PATH": f"{tool.parent}:{os.environ.get('PATH', '')}"}
    run = subprocess.run([str(tool), "generate", "--path", str(spec), "--meta", "none", "--output-path",
                          str(out / "pocketvm_client")], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(out))
    yield importlib.import_module("pocketvm_client")
    sys.path.remove(str(out))
    shutil.rmtree(out, ignore_errors=True)


def test_a_generated_client_drives_the_server(generated, server, ticker_snapshot):
    from pocketvm_client import AuthenticatedClient, Client
    from pocketvm_client.api.default import (create_vm, delete_vm, get_vm, list_vms, pause_vm, resume_vm,
                                             vm_metrics)  # fmt: skip
    from pocketvm_client.models import VM, CreateVM, CreateVMEnv, Deleted, Error, Metrics, VMList, VMState

    from servetools import TOKEN

    anonymous = Client(base_url=server.url)
    refused = list_vms.sync(client=anonymous)
    assert isinstance(refused, Error) and "bearer token" in refused.error

    client = AuthenticatedClient(base_url=server.url, token=TOKEN, timeout=120)
    env = CreateVMEnv()
    env["GREETING"] = "hello"
    made = create_vm.sync(client=client, body=CreateVM(snapshot=str(ticker_snapshot), name="gen", ttl=300, env=env))
    assert isinstance(made, VM), made
    assert made.name == "gen" and made.state == VMState.RUNNING and made.env == ["GREETING"]
    listed = list_vms.sync(client=client)
    assert isinstance(listed, VMList) and [v.name for v in listed.vms] == ["gen"]
    assert get_vm.sync("gen", client=client).pid == made.pid
    assert pause_vm.sync("gen", client=client).state == VMState.PAUSED
    assert resume_vm.sync("gen", client=client).state == VMState.RUNNING
    metrics = vm_metrics.sync("gen", client=client)
    assert isinstance(metrics, Metrics) and metrics.rss_bytes > 0 and metrics.guest_uptime > 0
    missing = get_vm.sync("ghost", client=client)
    assert isinstance(missing, Error) and "ghost" in missing.error
    gone = delete_vm.sync("gen", client=client)
    assert isinstance(gone, Deleted) and gone.deleted
    assert list_vms.sync(client=client).vms == []
