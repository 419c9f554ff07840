"""`modescope --help` stays fast: asking for help imports no heavy library; and `modescope.cli.common`, which
every command module imports, imports none of them (tests/unit/test_layout.py checks the rest of the graph)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import modescope.cli

HEAVY = ["torch", "transformers", "pandas", "matplotlib", "numpy", "scipy", "fastapi", "uvicorn", "ray", "peft"]
HELP_REQUESTS = [
    ["--help"],
    ["dist", "--help"],
    ["sample", "--help"],
    ["multiverse", "--help"],
    ["run", "--help"],
    ["lab", "run", "--help"],
    ["serve", "--help"],
    ["frontier", "--help"],
]

# Run in a fresh interpreter (this test process has imported torch long ago): after each help request, print
# the heavy top-level packages loaded so far.
SCRIPT = f"""
import json, sys
from typer.testing import CliRunner
from modescope.cli import app

heavy = {HEAVY!r}
seen = {{}}
for args in {HELP_REQUESTS!r}:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    seen[" ".join(args)] = sorted(name for name in heavy if name in sys.modules)
print(json.dumps(seen))
"""

CLI_PACKAGE = Path(modescope.cli.__file__).parent


def test_help_imports_no_heavy_library() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(seen) == [" ".join(args) for args in HELP_REQUESTS]
    assert seen == {request: [] for request in seen}


def test_python_dash_m_runs_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modescope.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m modescope.cli" in done.stdout and "multiverse" in done.stdout


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_common_is_the_bottom_of_the_cli_layer() -> None:
    imports = imported_modules(CLI_PACKAGE / "common.py")
    assert "modescope.cli.common" not in imports and "typer" in imports  # the walk sees what it should
    assert not [name for name in imports if name == "modescope.cli" or name.startswith("modescope.cli.")]
