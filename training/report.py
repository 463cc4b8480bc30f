"""The evaluation report a person reads: ROC and PRO curves, and overlays of the best and
worst cases, as PNG files next to one report.html."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training import metrics


def _curves(out: Path, rows) -> list[str]:
    labels = np.array([s.kind != "good" for s, *_ in rows])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    if labels.any() and not labels.all():
        fpr, tpr = metrics.roc(labels, np.array([r.score for _, _, r, _ in rows]))
        axes[0].plot(fpr, tpr)
    axes[0].plot([0, 1], [0, 1], ":", color="grey")
    axes[0].set(
        title="image ROC (score)", xlabel="false positive rate", ylabel="true positive rate"
    )
    masks = [m for *_, m in rows]
    if masks[0] is not None:
        fpr, pro = metrics.pro_curve(masks, [r.score_map for _, _, r, _ in rows])
        axes[1].plot(fpr, pro)
        axes[1].axvline(0.3, ls=":", color="grey")
        axes[1].set(
            title="PRO curve",
            xlabel="pixel false positive rate",
            ylabel="per-region overlap",
            xlim=(0, 1),
            ylim=(0, 1),
        )
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)
    return ["curves.png"]


def _overlay(out: Path, name: str, row) -> str:
    sample, img, res, mask = row
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    if mask is not None and mask.any():
        axes[0].contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].set_title(f"{sample.kind}/{sample.path.name} (truth: green)")
    axes[1].imshow(res.score_map, cmap="inferno")
    axes[1].set_title(f"score map, score {res.score:.3f}")
    axes[2].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[2].imshow(np.ma.masked_where(~res.mask, res.mask), cmap="autumn", alpha=0.5)
    axes[2].set_title(f"Omega ({len(res.regions)} regions), anomalous={res.is_anomalous}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return name


def write_report(out: Path, result: dict, rows, per_group: int = 3) -> Path:
    good = sorted((r for r in rows if r[0].kind == "good"), key=lambda r: r[2].score)
    bad = sorted((r for r in rows if r[0].kind != "good"), key=lambda r: r[2].score)
    groups = {
        "Defects scored lowest (worst misses)": bad[:per_group],
        "Normal images scored highest (worst false alarms)": good[::-1][:per_group],
        "Defects scored highest (best detections)": bad[::-1][:per_group],
    }
    images = _curves(out, rows)
    body = [
        f"<h1>nanoinspect evaluation: {html.escape(result['model']['name'])}</h1>",
        f"<pre>{html.escape(json.dumps(result, indent=2))}</pre>",
        *(f'<img src="{i}">' for i in images),
    ]
    for title, selected in groups.items():
        body.append(f"<h2>{title}</h2>")
        for k, row in enumerate(selected):
            name = f"overlay_{len(body)}_{k}.png"
            body.append(f'<img src="{_overlay(out, name, row)}" width="900"><br>')
    path = out / "report.html"
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>nanoinspect report</title>"
        "<body style='font-family:sans-serif'>" + "\n".join(body) + "</body>\n"
    )
    return path
