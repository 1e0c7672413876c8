#!/usr/bin/env python3
"""Build a Python plugin into a component.

    python plugins/sdk-py/build.py <plugin dir> <out.wasm>

componentize-py (pinned in requirements.txt, installed by scripts/lib.sh)
generates the bindings of wit/plugin.wit (the ``wit_world`` package the SDK
imports), runs the plugin's module once to snapshot it, and makes the
component. The plugin directory and plugins/sdk-py are on the module path;
``[tool.switchyard] module`` in the plugin's pyproject.toml names the module
that defines ``WitWorld`` (default ``app``).
"""

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

SDK = Path(__file__).resolve().parent
ROOT = SDK.parent.parent


def fail(message: str) -> None:
    print(f"build.py: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    if len(sys.argv) != 3:
        fail("usage: python plugins/sdk-py/build.py <plugin dir> <out.wasm>")
    plugin = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2]).resolve()
    tool = os.environ.get("SWITCHYARD_COMPONENTIZE_PY") or shutil.which("componentize-py")
    tool = str(Path(tool).resolve()) if tool else None
    if not tool:
        fail("componentize-py is not installed: scripts/build-plugins installs it (pip install -r plugins/sdk-py/requirements.txt)")
    try:
        manifest = tomllib.loads((plugin / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"{plugin / 'pyproject.toml'}: {e}")
    module = manifest.get("tool", {}).get("switchyard", {}).get("module", "app")
    if not (plugin / f"{module}.py").exists():
        fail(f"{plugin}: no {module}.py ([tool.switchyard] module in pyproject.toml names the module that defines WitWorld)")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Written under a temporary name and renamed: a failed build leaves no
    # newer, broken component behind.
    partial = out.with_name(out.name + ".partial")
    result = subprocess.run(
        [tool, "-d", str(ROOT / "wit"), "-w", "plugin", "componentize", module,
         "-p", str(plugin), "-p", str(SDK), "-o", str(partial)],
        cwd=plugin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if result.returncode != 0:
        print(result.stdout, file=sys.stderr)
        partial.unlink(missing_ok=True)
        fail(f"componentize-py failed for {plugin} (see above)")
    partial.replace(out)
    size = out.stat().st_size / 1048576
    print(f"built {out} ({size:.1f} MiB): componentize {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
