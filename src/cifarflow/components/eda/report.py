"""Rendering of the EDA report: one self-contained HTML page and a Markdown summary."""

from __future__ import annotations

import dataclasses
from html import escape
from typing import Any

from cifarflow.data.splits import SPLIT_NAMES
from cifarflow.training_reference import DataReference

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #1d232a; background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 26px; } h2 { margin-top: 36px; border-bottom: 1px solid #e3e6ea; padding-bottom: 4px; }
.sub { color: #5b6670; margin: 0 0 18px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #e3e6ea; border-radius: 8px; padding: 10px 16px; min-width: 120px; }
.card b { display: block; font-size: 22px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #eef0f2; vertical-align: middle; }
th { background: #f2f4f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img.px { image-rendering: pixelated; height: 60px; }
img.mean { image-rendering: pixelated; width: 48px; height: 48px; }
.pass { color: #1a7f37; } .fail { color: #cf222e; font-weight: 600; }
.fine { color: #5b6670; font-size: 12px; }
figure { margin: 8px 0; } svg { max-width: 100%; height: auto; }
"""


@dataclasses.dataclass
class ReportView:
    """Everything the templates show, precomputed by the executor."""

    stats: dict[str, Any]
    class_names: list[str]
    fine_by_class: list[list[str]]
    sample_rows: list[str]  # one PNG data URI per class
    mean_images: list[str]  # one PNG data URI per class
    distribution_svg: str
    histogram_svg: str
    duplicate_pairs: list[dict[str, Any]]
    # Per split, the data side of the training reference (train's is what evaluate records).
    image_statistics: dict[str, DataReference] = dataclasses.field(default_factory=dict)


def _cards(view: ReportView) -> str:
    splits = view.stats["splits"]
    items = [(f"{name} images", f"{splits[name]['count']:,}") for name in SPLIT_NAMES]
    items.append(("classes", str(len(view.class_names))))
    items.append(
        ("cross-split duplicate pairs", str(sum(view.stats["duplicates"]["across"].values())))
    )
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{v}</b>{escape(k)}</div>' for k, v in items)
        + "</div>"
    )


def _samples_table(view: ReportView) -> str:
    counts = {name: view.stats["splits"][name]["class_counts"] for name in SPLIT_NAMES}
    head = (
        "<tr><th>#</th><th>class</th><th>mean</th><th>train samples</th>"
        + "".join(f'<th class="num">{n}</th>' for n in SPLIT_NAMES)
        + "</tr>"
    )
    rows = []
    for i, name in enumerate(view.class_names):
        fine = ", ".join(view.fine_by_class[i])
        rows.append(
            f"<tr><td class='num'>{i}</td><td>{escape(name)}"
            + (f"<div class='fine'>{escape(fine)}</div>" if fine else "")
            + f"</td><td><img class='mean' alt='mean image of {escape(name)}' src='{view.mean_images[i]}'></td>"
            f"<td><img class='px' alt='samples of {escape(name)}' src='{view.sample_rows[i]}'></td>"
            + "".join(f"<td class='num'>{counts[s][i]:,}</td>" for s in SPLIT_NAMES)
            + "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _pixel_table(view: ReportView) -> str:
    head = (
        "<tr><th>split</th>"
        + "".join(f'<th class="num">mean {c}</th>' for c in "RGB")
        + "".join(f'<th class="num">std {c}</th>' for c in "RGB")
        + '<th class="num">constant images</th></tr>'
    )
    rows = []
    for name in SPLIT_NAMES:
        s = view.stats["splits"][name]
        cells = [f"{v:.2f}" for v in s["channel_mean"]] + [f"{v:.2f}" for v in s["channel_std"]]
        rows.append(
            f"<tr><td>{name}</td>"
            + "".join(f"<td class='num'>{c}</td>" for c in cells)
            + f"<td class='num'>{s['constant_images']}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table><p class='sub'>Pixel values 0–255, per RGB channel.</p>"


def _image_statistics_table(view: ReportView) -> str:
    features = ("brightness", "contrast", "saturation")
    head = "<tr><th>split</th>" + "".join(
        f'<th class="num">{f} {q}</th>' for f in features for q in ("mean", "p5", "p95")
    )
    rows = []
    for name, ref in view.image_statistics.items():
        cells = []
        for feature in features:
            d = getattr(ref, feature)
            cells += [d.mean, d.quantile(0.05), d.quantile(0.95)]
        rows.append(
            f"<tr><td>{name}</td>"
            + "".join(f"<td class='num'>{v:.3f}</td>" for v in cells)
            + "</tr>"
        )
    return (
        f"<table>{head}</tr>{''.join(rows)}</table><p class='sub'>Per image: brightness = mean luma "
        "(0.299 R + 0.587 G + 0.114 B, 0–255), contrast = std of luma, saturation = mean HSV "
        "saturation (0–1); p5/p95: 5th/95th percentiles over the split's images. The train row is "
        "the data side of the training reference (<code>reference.json</code>) that travels with "
        "the model.</p>"
    )


def _duplicates_section(view: ReportView) -> str:
    dup = view.stats["duplicates"]
    rows = [
        f"<tr><td>within {escape(k)}</td><td class='num'>{v}</td></tr>"
        for k, v in dup["within"].items()
    ]
    rows += [
        f"<tr><td>across {escape(k)}</td><td class='num'>{v}</td></tr>"
        for k, v in dup["across"].items()
    ]
    rows.append(
        f"<tr><td>pairs whose labels disagree</td><td class='num'>{dup['label_conflicts']}</td></tr>"
    )
    html = f"<table><tr><th>exact duplicate pairs</th><th class='num'>count</th></tr>{''.join(rows)}</table>"
    if view.duplicate_pairs:
        cells = []
        for pair in view.duplicate_pairs:
            (sa, ia), (sb, ib) = pair["a"], pair["b"]
            la, lb = (view.class_names[i] for i in pair["labels"])
            cells.append(
                f"<tr><td><img class='px' alt='duplicate pair' src='{pair['image']}'></td>"
                f"<td>{sa}[{ia}] <b>{escape(la)}</b><br>{sb}[{ib}] <b>{escape(lb)}</b></td></tr>"
            )
        html += f"<h3>Examples</h3><table>{''.join(cells)}</table>"
    return html


def _checks_table(view: ReportView) -> str:
    rows = [
        f"<tr><td class='{c['status']}'>{c['status']}</td><td>{escape(c['name'])}</td><td>{escape(c['detail'])}</td></tr>"
        for c in view.stats["checks"]
    ]
    return f"<table><tr><th>status</th><th>check</th><th>detail</th></tr>{''.join(rows)}</table>"


def render_html(view: ReportView) -> str:
    source = view.stats["source"]
    ingest = source.get("ingest") or {}
    subtitle = (
        f"Source: {escape(source['kind'])}"
        + (
            f", {escape(str(ingest.get('source')))} ({escape(str(ingest.get('verified_by')))})"
            if ingest
            else ""
        )
        + f" · val fraction {view.stats['val_fraction']} · seed {view.stats['seed']}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cifarflow EDA report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><main>
<h1>CIFAR-100 coarse classes: exploratory data analysis</h1>
<p class="sub">{subtitle}</p>
{_cards(view)}
<h2>Classes and samples</h2>
<p class="sub">Each row: the class's mean training image, random training samples, and its count per split.</p>
{_samples_table(view)}
<h2>Class distribution per split</h2>
<figure>{view.distribution_svg}</figure>
<h2>Pixel statistics</h2>
{_pixel_table(view)}
<figure>{view.histogram_svg}</figure>
<h2>Image statistics</h2>
{_image_statistics_table(view)}
<h2>Duplicates</h2>
{_duplicates_section(view)}
<h2>Data checks</h2>
{_checks_table(view)}
</main></body></html>
"""


def render_markdown(view: ReportView, metrics: dict[str, float]) -> str:
    splits = view.stats["splits"]
    lines = [
        "# EDA summary",
        "",
        "| split | images | mean R | mean G | mean B | std R | std G | std B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in SPLIT_NAMES:
        s = splits[name]
        values = " | ".join(f"{v:.2f}" for v in s["channel_mean"] + s["channel_std"])
        lines.append(f"| {name} | {s['count']:,} | {values} |")
    lines += [
        "",
        "| class | " + " | ".join(SPLIT_NAMES) + " |",
        "|---|" + "---:|" * len(SPLIT_NAMES),
    ]
    for i, name in enumerate(view.class_names):
        lines.append(
            f"| {name} | "
            + " | ".join(f"{splits[s]['class_counts'][i]:,}" for s in SPLIT_NAMES)
            + " |"
        )
    dup = view.stats["duplicates"]
    across = ", ".join(f"{k}: {v}" for k, v in dup["across"].items()) or "none"
    failed = [c for c in view.stats["checks"] if c["status"] != "pass"]
    lines += [
        "",
        f"Exact duplicate pairs across splits: {across}; label conflicts: {dup['label_conflicts']}.",
        f"Data checks: {len(view.stats['checks']) - len(failed)} passed, {len(failed)} failed.",
        f"Train class imbalance (largest/smallest): {metrics['train_class_imbalance']:.2f}.",
        "",
    ]
    return "\n".join(lines)
