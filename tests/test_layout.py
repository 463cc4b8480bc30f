"""The two products in service/ stay apart: the batch job (service.batch) imports nothing of
the HTTP server and the server nothing of it; only the command line starts either."""

from __future__ import annotations

import ast

from tests.conftest import ROOT


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _batch(module: str) -> bool:
    return module == "service.batch" or module.startswith("service.batch.")


def test_batch_job_and_http_server_import_each_other_not():
    service = ROOT / "service"
    for path in sorted(service.rglob("*.py")):
        mods = {m for m in _imports(path) if m == "service" or m.startswith("service.")}
        is_batch = path.parent.name == "batch"
        if is_batch:
            bad = {m for m in mods if not _batch(m)}
        elif path.name == "cli.py":
            bad = set()
        else:
            bad = {m for m in mods if _batch(m)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
