"""What every benchmark shares: side-by-side timing (variants alternate within each repeat,
so drift from other work on a shared machine hits all of them alike; medians over repeats),
the rows of the one table `make bench` prints, and the models and images they run on."""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "default.onnx"
CACHE = ROOT / "runs" / "bench"
THREADS = os.cpu_count() or 1
SIZE = (1024, 704)  # (width, height): the reference micrograph


@dataclass(frozen=True)
class Row:
    section: str
    what: str
    value: str  # the measured side, with its unit
    versus: str  # what it is compared with, measured in the same run
    ratio: float | None = None  # value / versus
    target: float | None = None  # the target for ratio
    op: str = ">="  # ratio >= target, or "<=" where lower is better
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.ratio is None or self.target is None:
            return ""
        met = self.ratio >= self.target if self.op == ">=" else self.ratio <= self.target
        return "met" if met else "MISSED"


def alternate(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each variant: all variants run once per repeat, in turn."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def matmul_rate(n: int = 2048) -> Callable[[], float]:
    """A callable that runs one float32 n x n matmul with numpy (this machine's BLAS, all
    cores) and returns its FLOPs; time it with `alternate`."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)

    def run() -> float:
        a @ a
        return 2.0 * n**3

    return run


def grey(width: int, height: int, seed: int = 0, defect: str | None = None) -> np.ndarray:
    """A synthetic SEM micrograph (H, W) float32 in [0, 1], as the demo data draws them."""
    from training.synth import draw_sample

    return draw_sample(np.random.default_rng(seed), width, height, defect)[0]


def bench_model() -> Path:
    """models/default.onnx written again with this code's export graph (same weights and
    calibration; cached under runs/bench): the model the benchmarks serve. The shipped
    file is left alone."""
    code = b"".join(
        (ROOT / p).read_bytes()
        for p in (
            "models/phase.py",
            "models/scoring.py",
            "models/gaussian.py",
            "models/morphology.py",
            "training/export.py",
        )
    )
    key = hashlib.sha256(DEFAULT_MODEL.read_bytes() + code).hexdigest()[:12]
    path = CACHE / f"default-{key}.onnx"
    if not path.is_file():
        from training.export import reexport

        CACHE.mkdir(parents=True, exist_ok=True)
        reexport(DEFAULT_MODEL, path)
    return path


def noop_model(pixel_threshold: float) -> Path:
    """An artifact with the default model's inputs, outputs and metadata whose graph does no
    work: every map is the image itself, the score its mean. Served, it measures the
    pipeline around the model (decode, queue, post, encode, HTTP) alone; pixel_threshold
    is chosen so post-processing finds about as many regions as the real map gives."""
    import onnx
    from onnx import TensorProto, helper

    from models.artifact import OUTPUTS

    real = onnx.load(str(DEFAULT_MODEL), load_external_data=False)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])
    scalars = [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in ("alpha", "sigma")]
    maps = [n for n in OUTPUTS if n != "score"]
    nodes = [helper.make_node("Identity", ["image"], [n]) for n in maps]
    nodes.append(helper.make_node("ReduceMean", ["image"], ["score"], axes=[1, 2, 3], keepdims=0))
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])]
    outputs += [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1, "H", "W"]) for n in maps
    ]
    by_name = {o.name: o for o in outputs}
    graph = helper.make_graph(nodes, "noop", [image, *scalars], [by_name[n] for n in OUTPUTS])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = real.ir_version
    props = {p.key: p.value for p in real.metadata_props}
    props |= {"name": "noop", "pixel_threshold": str(pixel_threshold)}
    helper.set_model_props(model, props)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"noop-{pixel_threshold:.6f}.onnx"
    onnx.save(model, str(path))
    return path


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process and all its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (
        f"{cpu}, {THREADS} cores, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}"
    )


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident set size (VmRSS) or its peak (VmHWM) of a process, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def table(rows: list[Row]) -> str:
    """The rows as one fixed-width text table, grouped by section."""
    head = ("section", "measured", "value", "versus (same run)", "ratio", "target", "")
    body = [
        (
            r.section,
            r.what,
            r.value,
            r.versus,
            "" if r.ratio is None else f"{r.ratio:.2f}x",
            "" if r.target is None else f"{r.op} {r.target:g}x",
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]

    def line(cells: tuple) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(head), line(tuple("-" * w for w in widths))]
    last = None
    for cells in body:
        out.append(line(("" if cells[0] == last else cells[0], *cells[1:])))
        last = cells[0]
    notes = [f"- {r.section}, {r.what}: {r.note}" for r in rows if r.note]
    return "\n".join(out + (["", *notes] if notes else []))


def show(rows: list[Row]) -> None:
    print(f"machine: {machine()}")
    print(table(rows))
