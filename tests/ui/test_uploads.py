"""What a client names as a file: only this server's uploads are opened, and URLs are downloaded within bounds."""

from __future__ import annotations

import http.server
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import httpx
import pytest
import safehttpx
from gradio import utils

from tests.conftest import SCENES_DIR
from vlviz.ui.agents import download, fetch, uploaded_file


def test_only_files_in_the_upload_folder_are_opened_and_probing_tells_nothing(tmp_path: Path) -> None:
    upload = Path(utils.get_upload_folder()) / "vlviz-test-upload"
    upload.mkdir(parents=True, exist_ok=True)
    (upload / "pairs.tar").write_bytes(b"x")
    assert uploaded_file(str(upload / "pairs.tar")) == os.path.realpath(upload / "pairs.tar")
    private = tmp_path / "private.tar"
    private.write_bytes(b"x")
    (upload / "link.tar").unlink(missing_ok=True)
    (upload / "link.tar").symlink_to(private)
    escaping = str(upload / "{..,..}" / os.path.relpath(private, upload))
    messages = set()
    for path in (str(private), str(upload / "link.tar"), escaping, str(upload / ".." / "nowhere" / "x.tar")):
        with pytest.raises(gr.Error, match=r"is not a file uploaded to this server") as refused:
            fetch(path)
        messages.add(str(refused.value).split(" is not")[1])
        assert str(tmp_path) not in str(refused.value) and utils.get_upload_folder() not in str(refused.value)
    assert len(messages) == 1  # an existing file and a missing one read alike


def test_a_file_url_is_read_in_place_only_when_it_names_this_server() -> None:
    upload = Path(utils.get_upload_folder()) / "vlviz-test-upload"
    upload.mkdir(parents=True, exist_ok=True)
    (upload / "a.png").write_bytes(b"x")
    url = f"http://127.0.0.1:7860/gradio_api/file={upload / 'a.png'}"
    assert fetch(url, own_host="127.0.0.1:7860") == os.path.realpath(upload / "a.png")
    assert fetch(url.replace("127.0.0.1", "localhost"), own_host="127.0.0.1:7860")  # loopback names alike
    with pytest.raises(gr.Error, match="Could not download"):  # another host: a download, refused (private)
        fetch(url.replace("127.0.0.1:7860", "evil.example"), own_host="127.0.0.1:7860")
    with pytest.raises(gr.Error, match="is not a file uploaded"):
        fetch("http://127.0.0.1:7860/gradio_api/file=/etc/hostname", own_host="127.0.0.1:7860")


def test_a_bare_path_gets_a_message_not_a_validation_error(app_url: str) -> None:
    for path, message in (("/srv/private.tar", "private.tar is not a file uploaded to this server"),
                          ("/etc/passwd", "Invalid file type")):  # fmt: skip
        with httpx.Client(base_url=app_url, timeout=60) as client:
            data = [[path], "a caption", "vlviz-scenes", "cosine similarity"]
            event = client.post("gradio_api/call/analyze", json={"data": data}).json()["event_id"]
            answer = client.get(f"gradio_api/call/analyze/{event}").text
        assert "event: error" in answer and message in answer, answer


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves /small (100 bytes), /big (3 MB, declared), /sneaky (3 MB, undeclared) and /hop (a redirect)."""

    def do_GET(self) -> None:
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "/small")
            self.end_headers()
            return
        size = 100 if self.path == "/small" else 3 * 2**20
        self.send_response(200)
        if self.path != "/sneaky":
            self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(b"v" * size)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def files_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A file server on loopback posing as a public host (its name resolves as if public)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def public(host: str) -> str:
        if host != "files.example":
            raise ValueError(f"Hostname {host} failed validation")
        return "127.0.0.1"

    monkeypatch.setattr(safehttpx, "async_validate_url", public)
    yield f"http://files.example:{server.server_address[1]}"
    server.shutdown()


def test_downloads_are_streamed_bounded_and_leave_nothing_when_refused(files_server: str) -> None:
    root = Path(utils.get_upload_folder())
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    small = Path(download(f"{files_server}/small", limit=2**20))
    assert small.read_bytes() == b"v" * 100 and small.name == "small"
    assert Path(download(f"{files_server}/hop", limit=2**20)).read_bytes() == b"v" * 100
    for path in ("/big", "/sneaky"):  # declared too large; or found too large while streaming
        with pytest.raises(ValueError, match="larger than 1 MB"):
            download(f"{files_server}{path}", limit=2**20)
    with pytest.raises(gr.Error, match="Could not download"):
        fetch(f"{files_server}/big".replace("files.example", "127.0.0.1"))  # a private address
    made = set(root.iterdir()) - before
    assert len(made) == 2  # the two files downloaded; no folder left by a refusal


def test_a_brace_path_through_the_api_reads_no_server_file(app_url: str, tmp_path: Path) -> None:
    """The attack of issue 21: a FileData path `UPLOADS/{..,..}/...` named a tar outside the upload folder."""
    secret = "the secret caption of a private shard"
    private = tmp_path / "private.tar"
    with tarfile.open(private, "w") as archive:
        for name, data in (("0.txt", secret.encode()), ("0.png", (SCENES_DIR / "scene_00.png").read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path = str(Path(utils.get_upload_folder()) / "{..,..}" / os.path.relpath(private, utils.get_upload_folder()))
    file_data = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "private.tar"}
    with httpx.Client(base_url=app_url, timeout=60) as client:
        event = client.post(
            "gradio_api/call/analyze", json={"data": [[file_data], "", "vlviz-scenes", "cosine similarity"]}
        ).json()["event_id"]
        answer = client.get(f"gradio_api/call/analyze/{event}").text
    assert secret not in answer and "event: error" in answer
    messages = [json.loads(line[6:]) for line in answer.splitlines() if line.startswith("data: ")]
    assert any(m and "not a file uploaded to this server" in str(m) for m in messages), answer
