"""tests.browser_setup: which Chromium the browser tests drive, and how the test command installs one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import browser_setup


class FakeChromium:
    def __init__(self) -> None:
        self.options: dict = {}

    def launch(self, **options):
        self.options = options
        return "browser"


class FakePlaywright:
    def __init__(self) -> None:
        self.chromium = FakeChromium()


@pytest.mark.parametrize("on_path", ["/usr/bin/chromium", None])
def test_debian_chromium_is_driven_when_on_path_else_playwrights_own(
    on_path: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser_setup.shutil, "which", lambda name: on_path if name == "chromium" else None)
    playwright = FakePlaywright()
    assert browser_setup.launch_chromium(playwright, ["--no-sandbox"]) == "browser"
    assert playwright.chromium.options.get("executable_path") == on_path
    assert playwright.chromium.options["headless"] is True


def test_apt_comes_first_only_for_root_with_apt() -> None:
    playwright = [sys.executable, "-m", "playwright", "install", "chromium"]
    as_root = browser_setup.install_commands(is_root=True, has_apt=True)
    assert [command[:2] for command in as_root] == [["apt-get", "update"], ["apt-get", "install"], playwright[:2]]
    assert as_root[1][-1] == "chromium" and as_root[2] == [*playwright, "--with-deps"]
    assert browser_setup.install_commands(is_root=False, has_apt=True) == [playwright]
    assert browser_setup.install_commands(is_root=True, has_apt=False) == [playwright]


def run_setup(monkeypatch: pytest.MonkeyPatch, launches_after: int, failing: tuple[str, ...] = ()) -> tuple[int, list]:
    """ensure_browser as root with apt, where the browser launches from the `launches_after`-th check on."""
    checks, ran = [], []

    def launches() -> str | None:
        checks.append(1)
        return None if len(checks) > launches_after else "Executable doesn't exist"

    def run(command, env, check):
        ran.append(command)
        assert env["DEBIAN_FRONTEND"] == "noninteractive"
        failed = any(word in command for word in failing)
        return subprocess.CompletedProcess(command, 1 if failed else 0)

    monkeypatch.setattr(browser_setup, "browser_launches", launches)
    monkeypatch.setattr(browser_setup.subprocess, "run", run)
    monkeypatch.setattr(browser_setup.os, "geteuid", lambda: 0)
    monkeypatch.setattr(browser_setup.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    return browser_setup.ensure_browser(), ran


def test_nothing_is_installed_when_a_chromium_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_setup(monkeypatch, launches_after=0) == (0, [])


def test_debians_chromium_is_installed_first(monkeypatch: pytest.MonkeyPatch) -> None:
    status, ran = run_setup(monkeypatch, launches_after=1)
    assert status == 0 and [command[1] for command in ran] == ["update", "install"]


def test_playwrights_chromium_is_installed_when_apt_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    status, ran = run_setup(monkeypatch, launches_after=1, failing=("install",))
    assert status == 1  # every way failed: the command stops before pytest, with the reason
    status, ran = run_setup(monkeypatch, launches_after=1, failing=("-qq",))
    assert status == 0 and ran[-1][1:4] == ["-m", "playwright", "install"]
