"""The browser code the app ships: one ES module (`vlviz/ui/static/dataset-map.js`), built from `frontend/`.

The Dataset tab's map is regl-scatterplot, chosen by measurement (docs/results/draw_engines.md). The bundle is a
package file, so running vlviz needs no npm; `python -m vlviz.ui.frontend` rebuilds it from the pinned lockfile
(`npm ci` in `frontend/`, then esbuild) and heads it with the packages, versions and licences it holds.
The app serves `static/` through its own route (`vlviz.ui.dataset_tab.dataset_routes`); this module only builds,
so that running it imports nothing of the app.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent / "static" / "dataset-map.js"
FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"  # in a checkout; not in an installed package
ENTRY = "src/dataset_map.js"


def bundled_packages(lockfile: Path) -> list[tuple[str, str, str]]:
    """(name, version, licence) of every runtime package the lockfile installs: what the bundle holds."""
    lock = json.loads(lockfile.read_text(encoding="utf-8"))
    packages = []
    for path, entry in sorted(lock.get("packages", {}).items()):
        if path.startswith("node_modules/") and not entry.get("dev"):
            packages.append((path.removeprefix("node_modules/"), entry["version"], entry.get("license", "unknown")))
    return packages


def header(packages: list[tuple[str, str, str]]) -> str:
    """The bundle's first lines: what built it and each package it holds with its licence."""
    lines = [
        "// vlviz Dataset map: built by `python -m vlviz.ui.frontend` from frontend/package-lock.json; do not edit.",
        "// Bundled packages (name version licence):",
        *(f"//   {name} {version} {licence}" for name, version, licence in packages),
    ]
    return "\n".join(lines) + "\n"


def build(frontend: Path = FRONTEND_DIR, out: Path = BUNDLE) -> Path:
    """Install the pinned packages (`npm ci`) and bundle the entry into `out` with esbuild, minified.

    Raises:
        RuntimeError: npm or esbuild failed (their output says why).
    """

    def run(command: list[str]) -> None:
        done = subprocess.run(command, cwd=frontend, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout)[-2000:]}")

    run(["npm", "ci", "--no-audit", "--no-fund"])
    built = frontend / "node_modules" / ".vlviz-bundle.js"
    esbuild = str(frontend / "node_modules" / ".bin" / "esbuild")
    run([esbuild, ENTRY, "--bundle", "--format=esm", "--minify", "--legal-comments=none", f"--outfile={built}"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header(bundled_packages(frontend / "package-lock.json")) + built.read_text(encoding="utf-8"))
    return out


if __name__ == "__main__":
    try:
        print(f"wrote {build()}")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
