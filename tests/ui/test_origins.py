"""Host and Origin: a local app answers its own pages and local clients, and refuses a web page elsewhere
(DNS rebinding, cross-site requests to the app or its MCP endpoint) with HTTP 403."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from vlviz.ui.origins import HostOriginGuard, host_guard


def _guard(env: dict[str, str]) -> HostOriginGuard | None:
    middleware = host_guard(env)
    return HostOriginGuard(None, *middleware[0].args, **middleware[0].kwargs) if middleware else None


def test_the_local_app_refuses_other_hosts_and_cross_site_pages(app_url: str) -> None:
    port = urlsplit(app_url).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert httpx.get(app_url, headers={"Host": host}).status_code == 200, host
    assert httpx.get(app_url, headers={"Origin": app_url.rstrip("/")}).status_code == 200  # its own page
    rebound = httpx.get(app_url, headers={"Host": f"evil.example:{port}"})  # DNS rebinding
    assert rebound.status_code == 403 and rebound.text.startswith("Refused: Host 'evil.example")
    for origin in ("http://evil.example", f"http://localhost:{port + 1}", "null"):
        refused = httpx.post(f"{app_url}gradio_api/mcp/", headers={"Origin": origin}, json={})
        assert refused.status_code == 403 and "\n" not in refused.text, origin
    assert httpx.post(f"{app_url}gradio_api/queue/join", headers={"Origin": "http://evil.example"}).status_code == 403


@pytest.mark.parametrize(
    ("host", "origin", "refused"),
    [
        ("127.0.0.1:7860", None, False),
        ("LOCALHOST:7860", "http://localhost:7860", False),
        ("[::1]:7860", "http://[::1]:7860", False),
        ("127.0.0.1:7860", "http://127.0.0.1:7861", True),  # another local page
        ("127.0.0.1:7860", "http://[::1", True),
        ("evil.example", None, True),
        ("evil.example@localhost:7860", None, True),
        ("localhost.:7860", None, True),
        ("", None, True),
        ("vlviz.example.org", "https://vlviz.example.org", False),  # listed by the owner
        ("127.0.0.1:7860", "https://vlviz.example.org", False),  # behind a proxy that keeps the local Host
    ],
)
def test_a_local_app_answers_loopback_and_listed_names(host: str, origin: str | None, refused: bool) -> None:
    guard = _guard({"VLVIZ_ALLOWED_HOSTS": " vlviz.example.org "})
    assert (guard.refusal(host, origin) is not None) is refused


def test_a_public_server_checks_only_the_names_its_owner_lists() -> None:
    assert _guard({"VLVIZ_PUBLIC": "1"}) is None
    assert _guard({"GRADIO_SERVER_NAME": "0.0.0.0"}) is None
    guard = _guard({"GRADIO_SERVER_NAME": "0.0.0.0", "VLVIZ_ALLOWED_HOSTS": "vlviz.example.org"})
    assert guard.refusal("vlviz.example.org", "https://vlviz.example.org") is None
    assert guard.refusal("localhost:7860", None) is None  # Gradio checks its own start through localhost
    assert guard.refusal("other.example", None) is not None
    assert guard.refusal("vlviz.example.org", "https://evil.example") is not None
