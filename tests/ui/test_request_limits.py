"""Every request's body is bounded in bytes before the app reads it (vlviz.ui.request_limits)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from vlviz.ui import launch_kwargs
from vlviz.ui.request_limits import MAX_UPLOAD_BYTES, RequestBodyLimit, UploadLedger


async def _echo_size(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


@pytest.fixture
def client() -> Iterator[TestClient]:
    routes = [Route("/gradio_api/queue/join", _echo_size, methods=["POST"]),
              Route("/gradio_api/upload", _echo_size, methods=["POST"])]  # fmt: skip
    app = Starlette(routes=routes, middleware=[Middleware(RequestBodyLimit, max_bytes=100, upload_bytes=1000)])
    with TestClient(app) as test_client:
        yield test_client


def _chunks(size: int) -> Iterator[bytes]:
    """A body sent in chunks, with no Content-Length: counted as it arrives."""
    for _ in range(size // 10):
        yield b"x" * 10


def test_a_body_within_its_bound_reaches_the_app(client: TestClient) -> None:
    assert client.post("/gradio_api/queue/join", content=b"x" * 100).text == "100"
    assert client.post("/gradio_api/queue/join", content=_chunks(100)).text == "100"
    assert client.post("/gradio_api/upload", content=b"x" * 1000).text == "1000"  # uploads have the larger bound


def test_a_larger_body_is_refused_before_it_is_read(client: TestClient) -> None:
    refused = client.post("/gradio_api/queue/join", content=b"x" * 101)
    assert refused.status_code == 413 and "larger than the" in refused.text
    assert client.post("/gradio_api/queue/join", content=_chunks(200)).status_code == 413  # stopped as it arrives
    assert client.post("/gradio_api/upload", content=b"x" * 1001).status_code == 413
    lying = client.post("/gradio_api/queue/join", content=b"x", headers={"content-length": "-1"})
    assert lying.status_code in (400, 413)


def test_an_upload_that_would_leave_too_little_disk_is_refused() -> None:
    free = [10_000]
    routes = [Route("/gradio_api/upload", _echo_size, methods=["POST"]),
              Route("/gradio_api/queue/join", _echo_size, methods=["POST"])]  # fmt: skip
    bounds = {"upload_bytes": 1000, "free_disk": lambda: free[0], "min_free_disk": 9_000}
    app = Starlette(routes=routes, middleware=[Middleware(RequestBodyLimit, **bounds)])
    with TestClient(app) as client:
        assert client.post("/gradio_api/upload", content=b"x" * 1000).text == "1000"  # 9,000 left: enough
        free[0] = 9_500
        short = client.post("/gradio_api/upload", content=b"x" * 1000)
        assert short.status_code == 507 and "short of disk space" in short.text
        assert client.post("/gradio_api/queue/join", content=b"x" * 10).text == "10"  # other requests go on


def test_the_app_is_launched_with_the_bounds() -> None:
    settings = launch_kwargs()
    assert settings["max_file_size"] == MAX_UPLOAD_BYTES  # Gradio's own per-file bound, shown in its upload widget
    assert settings["app_kwargs"]["middleware"][0].cls is RequestBodyLimit


def test_a_public_server_bounds_each_addresss_uploads_over_time() -> None:
    ledger = UploadLedger(budget=1500, window_s=3600)
    public = [True]
    bounds = {"upload_bytes": 1000, "free_disk": lambda: 10**12, "ledger": ledger, "public": lambda: public[0]}
    app = Starlette(routes=[Route("/gradio_api/upload", _echo_size, methods=["POST"])],
                    middleware=[Middleware(RequestBodyLimit, **bounds)])  # fmt: skip
    with TestClient(app) as client:  # every request comes from the test client's one address
        assert client.post("/gradio_api/upload", content=b"x" * 1000).text == "1000"
        refused = client.post("/gradio_api/upload", content=b"x" * 600)  # 1,600 would pass the 1,500
        assert refused.status_code == 429 and "Uploads from your address reached" in refused.text
        assert client.post("/gradio_api/upload", content=b"x" * 500).text == "500"  # what is left
        public[0] = False  # a local server: the owner uploads what it likes
        assert client.post("/gradio_api/upload", content=b"x" * 1000).text == "1000"
    ledger.window_s = 0  # the uploads aged out
    assert ledger.room("testclient") == 1500
