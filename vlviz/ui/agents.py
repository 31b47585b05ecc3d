"""What agents need: the switch of Gradio's MCP server, repairs to it, and an upload list it can fill.

With `launch(mcp_server=True)` Gradio serves every public API endpoint as an MCP tool at
`/gradio_api/mcp/` (streamable HTTP; `/gradio_api/mcp/sse` for SSE clients). A tool's description and
its parameters' descriptions come from the endpoint function's docstring (`Args:`, one line per
parameter; `Returns:`, one line per output).

Gradio's MCP server calls the app through one `gradio_client` of its own, so every MCP client shares
one Gradio session: `analyze` then `consistency` works, but two agents see each other's pairs and runs.
Hence the default: on for a local server, off for a public one (`vlviz.policy`) unless `VLVIZ_MCP=1`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import gradio as gr
from anyio.to_thread import run_sync
from gradio import processing_utils, utils
from gradio.data_classes import ListFiles
from gradio.mcp import GradioMCPServer
from pydantic import model_validator

from vlviz.policy import is_public

ON, OFF = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
FILE_ROUTE = "/gradio_api/file="  # where Gradio serves its files; `/gradio_api/upload` answers with such paths


def mcp_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether to serve the MCP endpoint: `VLVIZ_MCP` (1/0, true/false, yes/no, on/off) if set, else only
    when the server is local, since all MCP clients share one session (README, "Agents (MCP)")."""
    env = os.environ if env is None else env
    choice = env.get("VLVIZ_MCP", "").strip().lower()
    if choice in ON | OFF:
        return choice in ON
    return not is_public(env=env)


def repair_gradio_mcp() -> None:
    """Make Gradio 6.31's MCP server return the outputs of tools that also write a gr.State.

    It drops State outputs by popping their indices one after another (the second index is then off by
    one), and without a client progress token it wraps all outputs in one tuple before dropping them:
    `analyze`, `consistency`, `embedding_space` and `train` failed with "pop index out of range".
    """
    GradioMCPServer.pop_returned_state = staticmethod(_without_state)
    GradioMCPServer._execute_tool_without_progress = _final_outputs
    # Its launch warning says State values are not kept between tool calls; here they are (one shared session).
    warnings.filterwarnings("ignore", "This MCP server includes a tool that has a gr.State input", UserWarning)


def _without_state(components: Sequence[Any], data: Sequence[Any]) -> list[Any]:
    """The outputs an MCP client gets: all but the values of gr.State outputs (those stay on the server)."""
    return [value for component, value in zip(components, data, strict=True) if not isinstance(component, gr.State)]


async def _final_outputs(server: GradioMCPServer, job: Any) -> list[Any]:
    """The last outputs of a `gradio_client` job, one list item per output component."""
    result = await run_sync(job.result)
    return list(result) if isinstance(result, tuple) else [result]  # the client returns several outputs as a tuple


def _inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with each local `$ref` replaced by the definition it names, and no `$defs` left."""
    if isinstance(schema, list):
        return [_inline_refs(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        named = defs[schema["$ref"].rsplit("/", 1)[-1]]
        schema = {**named, **{key: value for key, value in schema.items() if key != "$ref"}}
    return {key: _inline_refs(value, defs) for key, value in schema.items() if key != "$defs"}


class FilesOrURLs(ListFiles):
    """Gradio's list of files (FileData), where each file may also be an http(s) URL (what MCP clients send).

    Gradio's MCP server turns a URL into a file only where a parameter is one file, not a list of them,
    and its schema for a list keeps a `$ref` that points nowhere (every call then fails input validation).
    This model takes URL strings (`fetch` reads them in the callback, off the event loop) and its schema
    holds no `$ref`.
    """

    @model_validator(mode="before")
    @classmethod
    def _urls_as_files(cls, files: Any) -> Any:
        if not isinstance(files, list):
            return files
        return [_url_as_file(item) if isinstance(item, str) else item for item in files]

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        schema = super().model_json_schema(*args, **kwargs)
        schema.pop("description", None)  # this docstring, written for developers, not for API clients
        return _inline_refs(schema, schema.get("$defs", {}))


def _url_as_file(url: str) -> dict[str, Any]:
    """A FileData for a URL string: only http(s) URLs, never a path on the server."""
    if urlparse(url).scheme not in {"http", "https"}:
        raise ValueError(f"Give files as uploads or http(s) URLs, not {url[:80]!r}.")
    return {"path": url, "orig_name": Path(urlparse(url).path).name, "meta": {"_type": "gradio.FileData"}}


def accept_urls(files: gr.File) -> gr.File:
    """Let a `gr.File(file_count="multiple")` input take URLs too (see `FilesOrURLs`); returns it."""
    if files.file_count != "multiple":
        raise ValueError(f"accept_urls is for lists of files, not file_count={files.file_count!r}.")
    files.data_model = FilesOrURLs
    return files


def fetch(path_or_url: str) -> str:
    """A local path for one item of a `FilesOrURLs` input: a path as it is; a URL of this server's own
    uploads (`…/gradio_api/file=…`, what `/gradio_api/upload` answers) read in place; any other URL
    downloaded as Gradio downloads URLs (public hosts only)."""
    if urlparse(path_or_url).scheme not in {"http", "https"}:
        return path_or_url
    route = urlparse(path_or_url).path
    if FILE_ROUTE in route:
        path = Path(unquote(route.split(FILE_ROUTE, 1)[1]))
        if path.is_file() and utils.is_in_or_equal(path, utils.get_upload_folder()):
            return str(path)
    try:
        return processing_utils.ssrf_protected_download(path_or_url, utils.get_upload_folder())
    except OSError as error:  # storing it failed: the message would name server paths
        raise gr.Error(f"Could not store the file at {path_or_url[:200]}.") from error
    except Exception as error:  # refused host, HTTP status, network: safehttpx and httpx raise many kinds
        raise gr.Error(f"Could not download {path_or_url[:200]}: {error}") from error


def open_choices(component: gr.Dropdown | gr.CheckboxGroup) -> None:
    """Describe the component's value to API clients by its type, its current choices as examples only.

    Gradio's schema makes the choices an enum, which MCP clients enforce, but the model box takes any
    spec (`allow_custom_value`) and the runs' choices change with each session's trainings.
    """
    if isinstance(component, gr.CheckboxGroup):
        info: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
    else:
        info = {"type": "string", "examples": [value for _, value in component.choices]}
    component.api_info = lambda: info


def hide_state_loads(demo: gr.Blocks) -> None:
    """Keep the load events Gradio adds for callable gr.State values (each session's `SessionSpace`) out of the API.

    Gradio makes each a public endpoint named after its function (`/lambda`), hence an MCP tool with
    nothing to offer an agent. The browser still runs them on load; an API session makes its value on its
    first event, as Gradio does for any callable State value.
    """
    for block_fn in demo.fns.values():
        outputs = block_fn.outputs
        if len(outputs) == 1 and isinstance(outputs[0], gr.State) and block_fn.fn is outputs[0].value:
            block_fn.api_visibility = "private"
