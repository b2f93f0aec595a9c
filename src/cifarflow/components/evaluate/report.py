"""The per-class HTML report with confusion-matrix heat-maps (self-contained file)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def heatmap_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    """A row-normalised confusion-matrix heat-map (rows: true class) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, ax = plt.subplots(figsize=(9, 8))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _summary_rows(splits: dict[str, dict[str, Any]]) -> str:
    keys = (
        "count",
        "accuracy",
        "top5_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "loss",
        "ece_uncalibrated",
        "ece",
    )
    head = "".join(f"<th>{k}</th>" for k in ("split",) + keys)
    body = ""
    for name, m in splits.items():
        cells = "".join(
            f"<td>{m[k]}</td>" if k == "count" else f"<td>{m[k]:.4f}</td>" for k in keys
        )
        body += f"<tr><td>{html.escape(name)}</td>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _per_class_table(metrics: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['class'])}</td><td>{r['precision']:.3f}</td><td>{r['recall']:.3f}</td>"
        f"<td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>"
        for r in metrics["per_class"]
    )
    return f"<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>"


def render_report(
    splits: dict[str, dict[str, Any]], class_names: Sequence[str], title: str, temperature: float
) -> str:
    """The whole report: summary, then per split a per-class table and a heat-map."""
    sections = []
    for name, metrics in splits.items():
        png = base64.b64encode(
            heatmap_png(
                metrics["confusion_matrix"], class_names, f"{name}: confusion (row-normalised)"
            )
        ).decode()
        sections.append(
            f"<h2>{html.escape(name)} split</h2><div class='pair'>{_per_class_table(metrics)}"
            f"<img alt='{html.escape(name)} confusion matrix' src='data:image/png;base64,{png}'></div>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}
.pair{{display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Served probabilities are temperature-scaled (T = {temperature:.3f}, fitted on val);
<code>ece_uncalibrated</code> is the expected calibration error before scaling.</p>
{_summary_rows(splits)}
{"".join(sections)}
</body></html>
"""
