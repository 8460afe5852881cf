"""The audit's HTML report: drift of every input, then one section with plots per model version.

Written to ``$FLIXLAKE_HOME/artifacts/audit/<run-date>/audit.html`` with its PNGs beside it.
Plots draw on matplotlib's Agg canvas (no pyplot, no display) and the page reuses the evaluation
report's HTML helpers, so both render the same on headless workers.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flixlake.audit.models import BATCH_VIEW, OFFLINE, ONLINE, SERVED, ModelAudit
from flixlake.batch.fairness import OVERALL, gini
from flixlake.batch.report import CSS, esc, html_table
from flixlake.config import Settings

_SCOPE_COLORS = {OFFLINE: "#1f77b4", ONLINE: "#ff7f0e", BATCH_VIEW: "#2ca02c", SERVED: "#d62728"}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


# -- plots ---------------------------------------------------------------------------------------
def plot_drift(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Each input's drift distance as a share of its threshold: bars for a daily window, one
    line per input over the day for shorter windows."""
    judged = [r for r in rows if r["judged"] and r["distance"] is not None and r["max_distance"]]
    if not judged:
        return None
    inputs = sorted({r["input"] for r in judged})
    starts = sorted({r["window_start"] for r in judged})
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    if len(starts) == 1:
        ratios = [
            next(r["distance"] / r["max_distance"] for r in judged if r["input"] == name)
            for name in inputs
        ]
        colors = ["#a11" if v > 1 else "#1f77b4" for v in ratios]
        bars = ax.barh(inputs, ratios, color=colors)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in ratios], fontsize=7, padding=2)
        ax.axvline(1.0, color="#a11", linestyle="--", linewidth=1, label="threshold")
        ax.invert_yaxis()
        ax.set_xlabel("drift distance / threshold")
        ax.set_title(f"Drift of {starts[0]:%Y-%m-%d} against the reference (above 1: drifted)")
    else:
        for name in inputs:
            mine = sorted(
                (r for r in judged if r["input"] == name), key=lambda r: r["window_start"]
            )
            x = [f"{r['window_start']:%H:%M}" for r in mine]
            ax.plot(x, [r["distance"] / r["max_distance"] for r in mine], marker="o", label=name)
        ax.axhline(1.0, color="#a11", linestyle="--", linewidth=1, label="threshold")
        ax.set_ylabel("drift distance / threshold")
        ax.set_xlabel(f"window start, {starts[0]:%Y-%m-%d} (UTC)")
        ax.set_title("Drift per window against the same hours before (above 1: drifted)")
        ax.tick_params(axis="x", labelsize=7, rotation=90)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_segments(audit: ModelAudit, min_ratio: float, path: Path) -> Path | None:
    """Hit rate per segment with its interval, offline and online, and the required floor."""
    scopes = [s for s in (OFFLINE, ONLINE) if audit.qualities.get(s)]
    if not scopes:
        return None
    segments = sorted(
        {q.segment for s in scopes for q in audit.qualities[s]},
        key=lambda name: (name != OVERALL, name),
    )
    fig = _figure(8, max(3.0, 0.28 * len(segments) * len(scopes) + 1.5))
    ax = fig.add_subplot()
    step = 0.8 / len(scopes)
    for i, scope in enumerate(scopes):
        by_name = {q.segment: q for q in audit.qualities[scope]}
        ys, rates, lows, highs = [], [], [], []
        for j, name in enumerate(segments):
            q = by_name.get(name)
            if q is None or not math.isfinite(q.rate):
                continue
            ys.append(j + i * step)
            rates.append(q.rate)
            lows.append(q.rate - q.low)
            highs.append(q.high - q.rate)
        ax.errorbar(
            rates,
            ys,
            xerr=[lows, highs],
            fmt="o",
            capsize=2,
            color=_SCOPE_COLORS[scope],
            label=f"{scope} hit rate",
        )
        overall = by_name.get(OVERALL)
        if overall is not None and math.isfinite(overall.rate):
            ax.axvline(
                min_ratio * overall.rate,
                color=_SCOPE_COLORS[scope],
                linestyle=":",
                linewidth=1,
                label=f"{min_ratio:g} x {scope} overall",
            )
    ax.set_yticks([j + step * (len(scopes) - 1) / 2 for j in range(len(segments))], segments)
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of users hit (Wilson interval)")
    ax.set_title(f"{audit.model_version}: quality per user segment")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_lorenz(audit: ModelAudit, path: Path) -> Path | None:
    """Lorenz curves of slots per movie: how unequally the catalog is shown."""
    curves = {
        scope: measured.sorted_counts
        for scope, measured in audit.exposures.items()
        if measured.sorted_counts.sum() > 0
    }
    if not curves:
        return None
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999", linewidth=1, label="every movie equally")
    for scope, counts in sorted(curves.items()):
        cumulative = np.r_[0.0, np.cumsum(counts) / counts.sum()]
        share = np.linspace(0, 1, cumulative.size)
        ax.plot(
            share,
            cumulative,
            color=_SCOPE_COLORS.get(scope),
            label=f"{scope} (Gini {gini(counts):.3f})",
        )
    ax.set_xlabel("share of the catalog (least shown first)")
    ax.set_ylabel("share of the slots shown")
    ax.set_title(f"{audit.model_version}: exposure")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# -- HTML ----------------------------------------------------------------------------------------
def _drift_section(rows: Sequence[dict[str, Any]], plot: Path | None, notes: list[str]) -> str:
    parts = ["<h2>Drift of the inputs</h2>"]
    if rows:
        first = rows[0]
        parts.append(
            f"<p>Reference {esc(first['reference_start'])} .. {esc(first['reference_end'])}; "
            "distance = Jensen-Shannon distance with the sampling noise removed; an input "
            "drifts when it exceeds its threshold, or its volume changes more than allowed.</p>"
        )
    if plot is not None:
        parts.append(f"<img src='{plot.name}' alt='drift'>")
    parts.append(
        html_table(
            [
                "input",
                "window",
                "observations",
                "categories",
                "distance",
                "threshold",
                "raw JS",
                "noise",
                "PSI",
                "volume ratio",
                "largest shift",
                "verdict",
            ],
            [
                [
                    r["input"],
                    f"{r['window_start']:%Y-%m-%d %H:%M}",
                    f"{r['observations']:,.0f}",
                    r["categories"],
                    r["distance"],
                    r["max_distance"],
                    r["js_distance"],
                    r["expected_noise"],
                    r["psi"],
                    r["volume_ratio"],
                    r["largest_shift"],
                    "DRIFTED" if r["drifted"] else ("ok" if r["judged"] else "too few to judge"),
                ]
                for r in rows
            ],
        )
    )
    parts += [f"<p class='fail'>{esc(note)}</p>" for note in notes]
    return "\n".join(parts)


def _model_section(audit: ModelAudit, plots: list[Path | None]) -> str:
    parts = [f"<h2>Model {esc(audit.model_version)}</h2>", "<h3>Requirements</h3>"]
    parts.append(
        html_table(
            ["requirement", "evidence", "met", "observed", "threshold", "details"],
            [
                [
                    c.requirement,
                    c.evidence,
                    "yes" if c.passed else "NO",
                    c.observed,
                    c.threshold,
                    c.details,
                ]
                for c in audit.checks
            ],
        )
    )
    parts += [f"<img src='{p.name}' alt='{esc(p.stem)}'>" for p in plots if p is not None]
    if audit.exposures:
        parts.append("<h3>Exposure</h3>")
        names = [
            "slots",
            "movies_shown",
            "catalog_size",
            "coverage",
            "gini",
            "long_tail_share",
            "avg_popularity",
        ]
        parts.append(
            html_table(
                ["scope", *names],
                [
                    [s, f"{e.slots:,}", f"{e.movies_shown:,}", f"{e.catalog_size:,}"]
                    + [e.as_dict()[n] for n in names[3:]]
                    for s, e in audit.exposures.items()
                ],
            )
        )
    if audit.calibration:
        parts.append("<h3>Calibration (user's genre mix vs their list's)</h3>")
        parts.append(
            html_table(
                ["scope", "segment", "users", "KL (nats)", "Hellinger"],
                [
                    [scope, segment, n, kl, hel]
                    for scope, entries in audit.calibration.items()
                    for segment, n, kl, hel in entries
                ],
            )
        )
    if audit.qualities:
        parts.append("<h3>Hit rate per segment</h3>")
        parts.append(
            html_table(
                ["evidence", "segment", "users", "hit", "hit rate", "interval"],
                [
                    [scope, q.segment, q.n_users, q.hits, q.rate, f"[{q.low:.4f}, {q.high:.4f}]"]
                    for scope, qualities in audit.qualities.items()
                    for q in qualities
                ],
            )
        )
    if audit.watch_through:
        parts.append("<h3>Watch-through of the day's answers per segment</h3>")
        parts.append(html_table(["segment", "users", "watch-through"], audit.watch_through))
    parts += [f"<p>{esc(note)}</p>" for note in audit.notes]
    return "\n".join(parts)


def write_audit_report(
    settings: Settings,
    run_date: dt.date,
    drift_rows: Sequence[dict[str, Any]],
    models: Sequence[ModelAudit],
    notes: list[str],
    out_dir: Path,
) -> Path:
    """Write ``audit.html`` (+ PNGs) into ``out_dir``; its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    min_ratio = settings.audit.requirements.model.min_quality_ratio
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>audit {esc(run_date)}</title><style>{CSS}</style></head><body>",
        f"<h1>Audit of {esc(run_date)}</h1>",
        _drift_section(drift_rows, plot_drift(drift_rows, out_dir / "drift.png"), notes),
    ]
    for audit in models:
        stem = _safe(audit.model_version)
        plots = [
            plot_segments(audit, min_ratio, out_dir / f"{stem}_segments.png"),
            plot_lorenz(audit, out_dir / f"{stem}_exposure.png"),
        ]
        parts.append(_model_section(audit, plots))
    if not models:
        parts.append("<p>No model was served on this day and none is published.</p>")
    parts.append("</body></html>")
    target = out_dir / "audit.html"
    target.write_text("\n".join(parts), encoding="utf-8")
    return target
