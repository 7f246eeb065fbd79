"""The README's FastAPI example is a real file; run it, and keep the README quoting it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.server.serve import HubServer

from ..support import Recorder, eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fastapi_app.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastapi_app"] = module
    spec.loader.exec_module(module)
    return module


def test_readme_quotes_the_example_verbatim() -> None:
    assert EXAMPLE.read_text().strip() in (ROOT / "README.md").read_text()


async def test_fastapi_example_publishes_to_subscribers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_PORT", "0")  # configured like any deployment: by environment
    example = load_example()
    server = HubServer(example.hub, app=example.app)
    await server.start()
    try:
        rec = Recorder(f"ws://127.0.0.1:{server.port}/rt/ws")
        await rec.subscribed("orders")
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            reply = await http.post("/orders", json={"sku": "tea", "qty": 2})
        assert reply.json() == {"offset": 1}
        await eventually(lambda: len(rec.deliveries) == 1, what="order delivered")
        assert rec.deliveries[0].data == {"sku": "tea", "qty": 2}
        # The README's Python client sends "orders.create": the example's handler answers.
        assert await rec.client.send("orders.create", {"sku": "tea"}) == {"offset": 2}
        await eventually(lambda: len(rec.deliveries) == 2, what="handled order delivered")
        await rec.close()
    finally:
        await server.stop()
