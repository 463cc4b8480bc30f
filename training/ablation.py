"""The ablation of an exported model: its trained networks scored by the formula's map
alone, by its two terms alone, by the hand-made terms alone, and by the mix calibration
chose. Each variant is the
artifact with other term weights, alpha and sigma (the self-check's best of that family,
recorded by calibration), so every figure comes from the graph that serves. The variants'
thresholds are the shipped model's: their AUROC and AUPRO are meaningful, their F1 is not.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from models.artifact import ArtifactMeta
from training.calibrate import write_artifact

FAMILIES = ("formula", "d", "r", "handmade")  # as training.calibrate.families names them
METRICS = ("image_auroc", "pixel_auroc", "aupro")  # what a family's figures are compared by


def read_meta(path: Path) -> ArtifactMeta:
    model = onnx.load(path, load_external_data=False)
    return ArtifactMeta.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def write_variants(model: Path, out: Path) -> dict[str, Path]:
    """OUT/<family>.onnx for each family the model's calibration recorded a best choice of."""
    meta = read_meta(model)
    found = meta.calibration.get("families", {})
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for family in FAMILIES:
        if (best := found.get(family)) is None:
            continue
        variant = meta.with_(
            alpha=best["alpha"], sigma=best["sigma"], term_weights=list(best["weights"])
        )
        written[family] = out / f"{family}.onnx"
        write_artifact(onnx.load(model), variant, written[family])
    return written


def run(model: Path, test: Path, out: Path) -> dict[str, dict]:
    """Evaluate each variant of model on the labelled set test: OUT/<family>/metrics.json
    (and its report); returns each family's metrics."""
    from training.evaluate import evaluate

    variants = write_variants(model, out)
    return {family: evaluate(path, test, out / family) for family, path in variants.items()}


if __name__ == "__main__":  # python -m training.ablation MODEL.onnx TEST_DIR OUT_DIR
    import sys

    found = run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    for family, m in found.items():
        figures = ", ".join(f"{k} {m.get(k) or float('nan'):.3f}" for k in METRICS)
        print(f"{family}: {figures}")
