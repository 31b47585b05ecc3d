"""What agents need: the switch of Gradio's MCP server, repairs to it, and an upload list it can fill.

With `launch(mcp_server=True)` Gradio serves every public API endpoint as an MCP tool at
`/gradio_api/mcp/` (streamable HTTP; `/gradio_api/mcp/sse` for SSE clients). A tool's description and
its parameters' descriptions come from the endpoint function's docstring (`Args:`, one line per
parameter; `Returns:`, one line per output).

Gradio's MCP server calls the app through one `gradio_client` of its own, so every MCP client shares
one Gradio session: `analyze` then `consistency` works, but two agents see each other's pairs and runs.
Hence the default: on for a local server, off for a public one (`vlviz.models.policy`) unless `VLVIZ_MCP=1`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

import gradio as gr
import httpx
import safehttpx
from anyio.to_thread import run_sync
from gradio import processing_utils, utils
from gradio.data_classes import ListFiles
from gradio.mcp import GradioMCPServer
from gradio_client import utils as client_utils
from pydantic import model_validator

from vlviz.data.samples import ASSETS_DIR
from vlviz.models.policy import is_public
from vlviz.ui.messages import refusal

ON, OFF = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
FILE_ROUTE = "/gradio_api/file="  # where Gradio serves its files; `/gradio_api/upload` answers with such paths
MAX_DOWNLOAD_BYTES = 512 * 2**20
"""Largest file downloaded from a URL an agent gives (the size of the largest upload format's budget)."""
MAX_REDIRECTS = 5
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def mcp_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether to serve the MCP endpoint: `VLVIZ_MCP` (1/0, true/false, yes/no, on/off) if set, else only
    when the server is local, since all MCP clients share one session (docs/api.md, "Agents (MCP)")."""
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
    """A FileData for a string: an http(s) URL, or anything else as a path that `fetch` then refuses with its
    message unless it is one of this server's uploads.

    Refusing here would not reach the client: pydantic wraps every ValueError (gr.Error included) in a
    validation error, which Gradio answers with `error: null`.
    """
    name = Path(urlparse(url).path).name if urlparse(url).scheme in {"http", "https"} else Path(url).name
    return {"path": url, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def accept_urls(files: gr.File) -> gr.File:
    """Let a `gr.File(file_count="multiple")` input take URLs too (see `FilesOrURLs`); returns it."""
    if files.file_count != "multiple":
        raise ValueError(f"accept_urls is for lists of files, not file_count={files.file_count!r}.")
    files.data_model = FilesOrURLs
    return files


def uploaded_file(path: str) -> str:
    """The real path of a file a client named, when it is one of this server's uploads (or a bundled sample).

    Gradio checks that a FileData path lies in its upload folder by its text, so a name that resolves
    elsewhere (a link, or `{..,..}` which a reader might expand) could pass; here the path is resolved
    first, links and all. The message is the same whether or not such a file exists: nothing to probe.
    """
    real = Path(os.path.realpath(path))
    roots = [Path(os.path.realpath(utils.get_upload_folder())), ASSETS_DIR.resolve()]
    if real.is_file() and any(root in real.parents for root in roots):
        return str(real)
    raise refusal(f"{Path(path).name[:100]} is not a file uploaded to this server; upload it again.")


def _same_server(netloc: str, own_host: str | None) -> bool:
    """Whether a URL's host:port names this server: the request's own Host, or loopback when both are local."""
    if not own_host:
        return False
    theirs, ours = urlparse(f"//{netloc}"), urlparse(f"//{own_host}")
    if netloc.lower() == own_host.lower():
        return True
    return theirs.port == ours.port and {theirs.hostname, ours.hostname} <= LOOPBACK_NAMES


def fetch(path_or_url: str, own_host: str | None = None) -> str:
    """A local path for one item of a `FilesOrURLs` input.

    A path must be one of this server's uploads (`uploaded_file`); a URL of this server's own uploads
    (`…/gradio_api/file=…` on `own_host`, the request's Host, as `/gradio_api/upload` answers) is read in
    place, with the same check; any other URL is downloaded from a public host (`download`).
    """
    parsed = urlparse(path_or_url)
    if parsed.scheme not in {"http", "https"}:
        return uploaded_file(path_or_url)
    if FILE_ROUTE in parsed.path and _same_server(parsed.netloc, own_host):
        return uploaded_file(unquote(parsed.path.split(FILE_ROUTE, 1)[1]))
    try:
        return download(path_or_url)
    except OSError as error:  # storing it failed: the message would name server paths
        raise refusal(f"Could not store the file at {path_or_url[:200]}.") from error
    except Exception as error:  # refused host, HTTP status, size, network: httpx and safehttpx raise many kinds
        raise refusal(f"Could not download {path_or_url[:200]}: {error}") from error


def download(url: str, limit: int = MAX_DOWNLOAD_BYTES) -> str:
    """Download a URL into a new folder of Gradio's upload folder, as Gradio's SSRF-protected download does
    (public addresses only, each redirect checked again), but streamed and refused past `limit` bytes.

    The folder is made only once the server answers with a file, and removed when anything fails.
    """
    return client_utils.synchronize_async(_download, url, limit)


async def _download(url: str, limit: int) -> str:
    for _ in range(MAX_REDIRECTS + 1):
        host = httpx.URL(url).host
        if not host:
            raise ValueError("the URL has no host")
        public = safehttpx.matches_domain_whitelist(host, processing_utils.PUBLIC_HOSTNAME_WHITELIST)
        transport = None if public else safehttpx.AsyncSecureTransport(await safehttpx.async_validate_url(host))
        async with httpx.AsyncClient(transport=transport) as client, client.stream("GET", url) as response:
            if response.has_redirect_location:
                url = urljoin(url, response.headers["Location"])  # response.url names the pinned IP
                continue
            if response.status_code != 200:
                raise ValueError(f"the server answered HTTP {response.status_code}")
            if int(response.headers.get("content-length") or 0) > limit:
                raise ValueError(f"the file is larger than {limit // 2**20} MB")
            return await _store(response, Path(urlparse(url).path).name, limit)
    raise ValueError(f"more than {MAX_REDIRECTS} redirects")


async def _store(response: httpx.Response, name: str, limit: int) -> str:
    os.makedirs(utils.get_upload_folder(), exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=utils.get_upload_folder()))
    path = folder / (client_utils.strip_invalid_filename_characters(name) or "file")
    try:
        size = 0
        with path.open("wb") as file:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise ValueError(f"the file is larger than {limit // 2**20} MB")
                file.write(chunk)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return str(path)


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
    """Keep the load events Gradio adds for callable gr.State values (each session's `Session`) out of the API.

    Gradio makes each a public endpoint named after its function (`/lambda`), hence an MCP tool with
    nothing to offer an agent. The browser still runs them on load; an API session makes its value on its
    first event, as Gradio does for any callable State value.
    """
    for block_fn in demo.fns.values():
        outputs = block_fn.outputs
        if len(outputs) == 1 and isinstance(outputs[0], gr.State) and block_fn.fn is outputs[0].value:
            block_fn.api_visibility = "private"
