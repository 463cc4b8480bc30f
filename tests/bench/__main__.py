"""`make bench`: every tests/bench/bench_*.py that defines rows() contributes to ONE table,
printed at the end with the machine it ran on; a module without rows() (a script of its
own) is run as before, after the table.

    python -m tests.bench [NAME ...]     e.g. python -m tests.bench runtime http
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.common import ROOT, show

ORDER = (
    "runtime",
    "detector",
    "http",
    "pipeline",
    "memory",
    "batch",
    "train",
    "sizes",
)  # the table's sections


def main() -> None:
    found = sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))
    names = sys.argv[1:] or sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    rows, scripts = [], []
    began = time.monotonic()
    for name in names:
        module = importlib.import_module(f"tests.bench.bench_{name}")
        if not hasattr(module, "rows"):
            scripts.append(module.__name__)
            continue
        t0 = time.monotonic()
        rows += module.rows()
        print(f"bench {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    print(
        f"\n{len(rows)} rows in {(time.monotonic() - began) / 60:.1f} min; ratios of two "
        "things measured side by side in this run, alternating, medians over repeats\n"
    )
    show(rows)
    for module in scripts:
        subprocess.run([sys.executable, "-m", module], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
