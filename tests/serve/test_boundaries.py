"""Layering: serve/ never imports train/ or the importers; twinv2 --help works without the serving extras."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import twinv2

SERVE = Path(twinv2.__file__).parent / "serve"
FORBIDDEN = ("twinv2.train", "twinv2.data.importers", "twinv2.demo")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_serve_never_imports_train_or_importers_even_lazily():
    offenders = [(f.name, m) for f in sorted(SERVE.glob("*.py")) for m in _imports(f)
                 if m.startswith(FORBIDDEN)]
    offenders += [("checkpoints.py", m) for m in _imports(SERVE.parent / "checkpoints.py") if m.startswith(FORBIDDEN)]
    assert not offenders


def test_serve_import_closure_has_no_train_module():
    code = ("import sys, twinv2.serve.app, twinv2.serve.redis_store, twinv2.serve.server, twinv2.checkpoints; "
            "bad = [m for m in sys.modules if m.startswith(('twinv2.train', 'twinv2.data.importers'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_help_imports_no_serving_dependency():
    code = ("import sys; sys.argv = ['twinv2', '--help']\n"
            "from twinv2.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('fastapi', 'uvicorn', 'redis', 'torch') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "serve" in out.stdout
