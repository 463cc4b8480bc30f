"""Peak RSS of a fresh process that loads the default model and scores one 4096x4096 image
(tiled by the Detector, so memory is bounded by the tile, not the image), against the 2 GB
budget.

    python -m tests.bench.bench_memory [--side 4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from tests.bench.common import ROOT, THREADS, Row, bench_model, show

BUDGET_MB = 2048
CHILD = """
import json, sys, time
import numpy as np
from models.detector import Detector
from tests.bench.common import grey, rss_mb
model, side, tile, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
image = np.tile(grey(512, 512), (side // 512, side // 512))
d = Detector(model, providers=("cpu",), threads=threads, tile=tile)
before = rss_mb()
t0 = time.perf_counter()
(r,) = d.score([image])
print(json.dumps({"peak": rss_mb(field="VmHWM"), "loaded": before, "tiles": r.tiles,
                  "seconds": time.perf_counter() - t0}))
"""


def peak(model: str, side: int, tile: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model, str(side), str(tile), str(THREADS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def rows(side: int = 4096) -> list[Row]:
    model = str(bench_model())
    default = peak(model, side, 1536)
    return [
        Row("memory", f"peak RSS, one {side}x{side} image", f"{default['peak']:.0f} MB",
            f"budget {BUDGET_MB} MB", default["peak"] / BUDGET_MB, 1.0, "<=",
            f"tile 1536: {default['tiles']} tiles, {default['seconds']:.0f} s; "
            f"{default['loaded']:.0f} MB after loading the model"),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=4096)
    show(rows(p.parse_args().side))


if __name__ == "__main__":
    main()
