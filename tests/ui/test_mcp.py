"""The app as an MCP server (Gradio's): its tools, their descriptions and named parameters, and calls
through a real MCP client over streamable HTTP, against the app launched on the offline model."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gradio as gr
import httpx
import pytest
from gradio_client import Client
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from tests.conftest import SCENE_CAPTIONS, SCENES_DIR
from vlviz.losses import LOSSES
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.ui import launch_kwargs
from vlviz.ui.agents import fetch, mcp_enabled

TOOLS = {
    "analyze", "affinity_downloads", "query", "consistency", "consistency_downloads", "embedding_space",
    "embedding_downloads", "grounding", "every_method", "grounding_annotations", "keywords", "train", "stop_training",
    "compare_models", "lens",
}  # fmt: skip
ANALYZE_DATA, CONSISTENCY_DATA = 5, 7  # the data output's place among each tool's outputs (States left out)


@pytest.fixture(scope="module")
def tools(app_url: str) -> dict[str, dict[str, Any]]:
    """Gradio's MCP schema of the app: each tool's name, description and input schema."""
    response = httpx.get(f"{app_url}gradio_api/mcp/schema", timeout=120)
    response.raise_for_status()
    return {tool["name"]: tool for tool in response.json()}


def test_every_public_endpoint_is_a_tool_that_says_what_it_returns(tools: dict[str, dict[str, Any]]) -> None:
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        assert "Returns:" in tool["description"], name
        assert "$ref" not in json.dumps(tool["inputSchema"]), name  # a dangling $ref fails every call's validation


def test_every_parameter_is_named_and_described(tools: dict[str, dict[str, Any]], app_url: str) -> None:
    for name, tool in tools.items():
        for parameter, schema in tool["inputSchema"]["properties"].items():
            assert not re.fullmatch(r"param_\d+", parameter), (name, parameter)
            assert schema.get("description"), (name, parameter)
    train = tools["train"]
    assert set(LOSSES) <= set(train["inputSchema"]["properties"])
    assert all(loss in train["description"] for loss in LOSSES)
    assert "enum" not in tools["analyze"]["inputSchema"]["properties"]["model_spec"]  # any spec, not only the listed
    endpoints = Client(app_url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint, info in endpoints.items():
        for parameter in info["parameters"]:
            assert not parameter["parameter_name"].startswith("param_"), (endpoint, parameter)
            assert not parameter["label"].startswith("parameter_"), (endpoint, parameter)


def _uploaded_urls(app_url: str, count: int) -> tuple[list[str], str]:
    """Upload the first `count` bundled scenes as an agent's upload tool does: their URLs and captions."""
    scenes = sorted(SCENES_DIR.glob("scene_*.png"))[:count]
    response = httpx.post(
        f"{app_url}gradio_api/upload", files=[("files", (f.name, f.read_bytes())) for f in scenes], timeout=60
    )
    response.raise_for_status()
    urls = [f"{app_url}gradio_api/file={path}" for path in response.json()]
    return urls, "\n".join(SCENE_CAPTIONS[f.name] for f in scenes)


async def _analyze_then_consistency(app_url: str, urls: list[str], captions: str) -> list[CallToolResult]:
    """Two calls of one MCP client: analyze (no progress token), then consistency (with one)."""

    async def progress(done: float, total: float | None, message: str | None) -> None:
        pass

    async with (
        streamable_http_client(f"{app_url}gradio_api/mcp/") as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = {tool.name for tool in (await session.list_tools()).tools}
        assert listed == TOOLS
        arguments = {"files": urls, "captions_text": captions, "model_spec": OFFLINE_SPEC}
        analyzed = await session.call_tool("analyze", arguments)
        consistency = await session.call_tool("consistency", {"top_k": 2}, progress_callback=progress)
        return [analyzed, consistency]


def _data(result: CallToolResult, index: int) -> dict[str, Any]:
    """The data output of a tool's result (Gradio's MCP server sends each output as its Python repr)."""
    assert not result.isError, result.content
    return ast.literal_eval(result.content[index].text)


def test_an_agent_analyzes_uploaded_urls_then_reads_their_consistency(app_url: str) -> None:
    urls, captions = _uploaded_urls(app_url, 3)
    # In a thread of its own: the browser tests' session-wide Playwright keeps an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        analyzed, consistency = pool.submit(asyncio.run, _analyze_then_consistency(app_url, urls, captions)).result()
    data = _data(analyzed, ANALYZE_DATA)
    assert data["model"] == OFFLINE_SPEC and data["captions"] == captions.split("\n")
    assert data["names"] == ["scene_00.png", "scene_01.png", "scene_02.png"]
    image_text = data["image_text"]
    assert len(image_text) == 3 and all(len(row) == 3 and all(-1 <= v <= 1 for v in row) for row in image_text)
    assert all(1 <= rank <= 3 for rank in data["image_to_text_rank"])
    assert json.loads(ast.literal_eval(analyzed.content[0].text)["plot"])["data"][0]["type"] == "heatmap"
    figures = _data(consistency, CONSISTENCY_DATA)
    assert figures["names"] == data["names"]  # the session kept the pairs analyze encoded
    assert figures["figures"]["pairs"] == 3 and 0 <= figures["figures"]["mean_abs_inconsistency"] <= 2
    assert len(figures["sample_inconsistency"]) == 3 and len(figures["top_pairs"]) == 2


def test_vlviz_mcp_turns_the_server_off_and_a_public_server_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLVIZ_MCP", "0")
    assert launch_kwargs()["mcp_server"] is False
    monkeypatch.delenv("VLVIZ_MCP")
    monkeypatch.delenv("VLVIZ_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
    assert launch_kwargs()["mcp_server"] is True
    assert not mcp_enabled({"GRADIO_SERVER_NAME": "0.0.0.0"})  # public: every MCP client would share one session
    assert mcp_enabled({"GRADIO_SERVER_NAME": "0.0.0.0", "VLVIZ_MCP": "1"})


def test_a_url_is_never_read_from_a_private_address() -> None:
    with pytest.raises(gr.Error, match="Could not download"):
        fetch("http://127.0.0.1:9/gradio_api/file=/etc/hostname.png")
