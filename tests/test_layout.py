"""The layering rule, every arrow: cli -> service, training, models; training -> models;
service -> models; models imports none of them. Every import counts, those inside functions
too. Within service/, the batch job (service.batch) and the HTTP server import each other
not: only the command line starts either."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

ALLOWED = {
    "cli": {"service", "training", "models"},
    "service": {"models"},
    "training": {"models"},
    "models": set(),
}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (relative imports resolved)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            names.add(".".join([*base, *([node.module] if node.module else [])]))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _modules(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("top", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(top):
    bad = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _modules(top)
        for module in _imports(path)
        if (first := module.split(".")[0]) in ALLOWED and first != top
        if first not in ALLOWED[top]
    }
    assert not bad, sorted(bad)


def test_the_rule_covers_every_package_of_the_product():
    """A new top-level package must be given its place in ALLOWED."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED)


def _batch(module: str) -> bool:
    return module == "service.batch" or module.startswith("service.batch.")


def test_batch_job_and_http_server_import_each_other_not():
    for path in _modules("service"):
        mods = {m for m in _imports(path) if m == "service" or m.startswith("service.")}
        if path.parent.name == "batch":
            bad = {m for m in mods if not _batch(m)}
        else:
            bad = {m for m in mods if _batch(m)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_command_line_loads_training_only_in_its_commands():
    """`nanoinspect --help` and `serve --help` with torch hidden load no module of training:
    the serving image has no torch."""
    code = """
import sys
sys.modules["torch"] = None
from typer.testing import CliRunner
from cli import app
for args in (["--help"], ["serve", "--help"], ["score", "--help"]):
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
print(sorted(m for m in sys.modules if m.split(".")[0] == "training"))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
