"""The browser the browser tests drive, installed when it is missing: `python -m tests.browser_setup`.

The README's test command runs this before pytest, so the two set-up commands do all the set-up on a fresh
machine. The tests drive Debian's Chromium when `chromium` is on PATH, else Playwright's own build
(`launch_chromium`, which conftest's `browser` fixture uses too). When neither launches, this installs one:
Debian's `chromium` package through apt-get where apt is there and we are root, else Playwright's own
Chromium (`python -m playwright install chromium`, with `--with-deps` as root on apt, so that its system
libraries come too). It imports no vlviz, so it runs before anything heavy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

# Enough to launch as root in a container; the tests add their own quieter flags (tests.browser.CHROMIUM_ARGS).
CHECK_ARGS = ("--no-sandbox", "--disable-gpu")


def debian_chromium() -> str | None:
    """The system's Chromium (Debian's `chromium` package), when it is on PATH."""
    return shutil.which("chromium")


def launch_chromium(playwright, args: Sequence[str]):
    """A headless Chromium: Debian's when on PATH, else Playwright's own build."""
    executable = debian_chromium()
    options = {"executable_path": executable} if executable else {}
    return playwright.chromium.launch(headless=True, args=list(args), **options)


def browser_launches() -> str | None:
    """None when the tests' browser starts, else why it does not."""
    from playwright.sync_api import Error, sync_playwright

    try:
        with sync_playwright() as playwright:
            launch_chromium(playwright, CHECK_ARGS).close()
    except Error as error:
        return str(error).strip().splitlines()[0]
    return None


def install_commands(is_root: bool, has_apt: bool) -> list[list[str]]:
    """What to run, in order, until the browser launches: apt's Chromium first where we may use apt."""
    playwright = [sys.executable, "-m", "playwright", "install", "chromium"]
    if is_root and has_apt:
        return [
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "chromium"],
            [*playwright, "--with-deps"],  # no `chromium` package (e.g. Ubuntu's is a snap): Playwright's own
        ]
    return [playwright]


def ensure_browser() -> int:
    """Install a Chromium the tests can launch, when none can be: 0 once one launches, else 1."""
    if (reason := browser_launches()) is None:
        return _ready()
    print(f"browser tests: no Chromium launches ({reason}); installing one", flush=True)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in install_commands(is_root, shutil.which("apt-get") is not None):
        print("+ " + " ".join(command), flush=True)
        if subprocess.run(command, env=environment, check=False).returncode != 0:
            continue  # a stale mirror, no `chromium` package: try the next way
        if command[:2] == ["apt-get", "update"]:
            continue  # apt's index only: nothing to launch yet
        if (reason := browser_launches()) is None:
            return _ready()
    hint = "" if is_root else "; as root, `python -m playwright install-deps chromium` adds its system libraries"
    print(f"browser tests: no Chromium could be installed ({reason}{hint})", file=sys.stderr)
    return 1


def _ready() -> int:
    print(f"browser tests: Chromium ready ({debian_chromium() or 'Playwright build'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(ensure_browser())
