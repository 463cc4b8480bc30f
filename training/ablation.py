"""The ablation of an exported model: its trained networks scored by the formula's map
alone, by its two terms alone, by the hand-made terms alone, and by the mix calibration
chose. Each variant is the
artifact with other term weights, alpha and sigma (the self-check's best of that family,
recorded by calibration), exported from the same checkpoint with the same calibration, so
every figure comes from a graph like the one that serves. The variants' thresholds are the
shipped model's: their AUROC and AUPRO are meaningful, their F1 is not.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from models.artifact import ArtifactMeta
from models.atomic import replacing

FAMILIES = ("formula", "d", "r", "handmade")  # as training.calibrate.families names them
METRICS = ("image_auroc", "pixel_auroc", "aupro")  # what a family's figures are compared by


def read_meta(path: Path) -> ArtifactMeta:
    model = onnx.load(path, load_external_data=False)
    return ArtifactMeta.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def write_variants(model: Path, run: Path, out: Path) -> dict[str, Path]:
    """OUT/<family>.onnx for each family the model's calibration recorded a best choice of:
    the graph of run's checkpoint (the shipped graph may have left a family's terms out),
    with the model's calibration and the family's weights, alpha and sigma."""
    from training.export import with_meta
    from training.refit import scorer_from_run

    meta = read_meta(model)
    found = meta.calibration.get("families", {})
    scorer, _ = scorer_from_run(run)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for family in FAMILIES:
        if (best := found.get(family)) is None:
            continue
        variant = meta.with_(
            alpha=best["alpha"], sigma=best["sigma"], term_weights=list(best["weights"])
        )
        written[family] = out / f"{family}.onnx"
        with replacing(written[family]) as (tmp,):
            with_meta(scorer, variant, tmp, parity=False)
    return written


def run(model: Path, run_dir: Path, test: Path, out: Path) -> dict[str, dict]:
    """Evaluate each variant of model (exported from run_dir) on the labelled set test:
    OUT/<family>/metrics.json (and its report); returns each family's metrics."""
    from training.evaluate import evaluate

    variants = write_variants(model, run_dir, out)
    return {family: evaluate(path, test, out / family) for family, path in variants.items()}


if __name__ == "__main__":  # python -m training.ablation MODEL.onnx RUN_DIR TEST_DIR OUT_DIR
    import sys

    found = run(*(Path(a) for a in sys.argv[1:5]))
    for family, m in found.items():
        figures = ", ".join(f"{k} {m.get(k) or float('nan'):.3f}" for k in METRICS)
        print(f"{family}: {figures}")
