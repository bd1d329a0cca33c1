"""`qwen-edge report`: sweep rows (JSON lines) -> PNG plots and one self-contained HTML page.

Plots (matplotlib, the `report` extra): decode tokens/s against watts, joules per token against
threads, and power over time with the budget line for each governed run; engines (qwen-edge and
the peers measured under the same sensor) side by side. The page embeds the PNGs as data URIs
and lists every row, so it is one file to mail or publish. Without matplotlib the page has the
tables and says how to get the plots.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, require
from ..formats.atomic_files import write_atomically

COLORS = {"qwen-edge": "#1f77b4", "llama.cpp": "#d62728", "onnxruntime-genai": "#2ca02c"}
MARKERS = "osD^v<>"


def _pyplot() -> Any:
    mpl = require("matplotlib", "report")
    mpl.use("Agg")
    return require("matplotlib.pyplot", "report")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    _pyplot().close(fig)
    return buf.getvalue()


def _label(row: dict[str, Any]) -> str:
    return f"{row['engine']} {row.get('recipe') or row['model']}"


def plot_rate_vs_power(rows: Sequence[dict[str, Any]]) -> bytes | None:
    """Decode tokens/s against decode watts, one marker per engine and recipe."""
    points = [r for r in rows if r.get("decode") and r.get("decode_tok_s")]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    contexts = len({r.get("context") for r in points})
    for i, label in enumerate(sorted({_label(r) for r in points})):
        group = [r for r in points if _label(r) == label]
        ax.scatter(
            [r["decode"]["watts"] for r in group],
            [r["decode_tok_s"] for r in group],
            label=label,
            color=COLORS.get(group[0]["engine"]),
            marker=MARKERS[i % len(MARKERS)],
        )
        for r in group:
            text = f"{r['threads']}t" + (f" ≤{r['budget_w']:g}W" if r.get("budget_w") else "")
            text += f" ctx {r['context']}" if contexts > 1 else ""
            ax.annotate(text, (r["decode"]["watts"], r["decode_tok_s"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("decode power (W)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title("Speed against power")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_energy_vs_threads(rows: Sequence[dict[str, Any]]) -> bytes | None:
    """Decode joules per token against threads (solid: total, dashed: above idle)."""
    points = [r for r in rows if r.get("decode") and not r.get("budget_w")]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({(_label(r), r.get("context")) for r in points}, key=str)
    for i, (label, context) in enumerate(keys):
        group = sorted(
            (r for r in points if (_label(r), r.get("context")) == (label, context)),
            key=lambda r: r["threads"],
        )
        color = COLORS.get(group[0]["engine"])
        name = label + (f", context {context}" if len({k[1] for k in keys}) > 1 else "")
        threads = [r["threads"] for r in group]
        marker = MARKERS[i % len(MARKERS)]
        ax.plot(threads, [r["decode"]["j_per_token"] for r in group], marker=marker,
                color=color, label=name)  # fmt: skip
        ax.plot(threads, [r["decode"]["j_per_token_above_idle"] for r in group], marker=marker,
                color=color, linestyle="--", alpha=0.6)  # fmt: skip
    ax.set_xlabel("threads")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("decode J/token (dashed: above idle)")
    ax.set_title("Energy per token against threads")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_power_over_time(row: dict[str, Any]) -> bytes | None:
    """The power trace of one governed run with its budget line."""
    governed = row.get("governed") or {}
    trace = governed.get("trace")
    if not trace:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    t = np.array([x for x, _ in trace])
    w = np.array([y for _, y in trace])
    ax.plot(t, w, linewidth=0.5, alpha=0.5, label="power (samples)")
    if t.size > 1 and t[-1] - t[0] >= 1.0:  # the budget holds on 1-s means: show those
        joules = np.concatenate([[0.0], np.cumsum(np.diff(t) * (w[1:] + w[:-1]) / 2)])
        ends = t[t >= t[0] + 1.0]
        mean = np.interp(ends, t, joules) - np.interp(ends - 1.0, t, joules)
        ax.plot(ends, mean, linewidth=1.5, color="#1f77b4", label="1-s mean")
    if row.get("budget_w"):
        ax.axhline(row["budget_w"], color="#d62728", linestyle="--", label="budget")
    if governed.get("idle_w") is not None:
        ax.axhline(governed["idle_w"], color="gray", linestyle=":", label="idle")
    ax.set_xlabel("seconds")
    ax.set_ylabel("W")
    goal = f"budget {row['budget_w']:g} W" if row.get("budget_w") else "target rate"
    ax.set_title(f"{_label(row)}: power over time, {goal}, {row['decode_tok_s']:.1f} tok/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def plots(rows: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    """Every plot the rows allow, by file name.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    out = {}
    for name, png in (("rate_vs_power.png", plot_rate_vs_power(rows)),
                      ("energy_vs_threads.png", plot_energy_vs_threads(rows))):  # fmt: skip
        if png is not None:
            out[name] = png
    for i, row in enumerate(r for r in rows if r.get("governed")):
        png = plot_power_over_time(row)
        if png is not None:
            out[f"power_over_time_{i}.png"] = png
    return out


def _cell(value: Any, fmt: str = "{:.3g}") -> str:
    if value is None:
        return ""
    return fmt.format(value) if isinstance(value, float) else html.escape(str(value))


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Every row as an HTML table."""
    head = ("engine", "model", "recipe", "threads", "context", "budget W", "prefill tok/s",
            "decode tok/s", "decode W", "J/token", "tokens/J", "J/token above idle",
            "1-s p95 W", "under budget")  # fmt: skip
    lines = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        d = r.get("decode") or {}
        g = (r.get("governed") or {}).get("power_1s_w") or {}
        under = g.get("under_budget")
        cells = [r.get("engine"), r.get("model"), r.get("recipe"), r.get("threads"),
                 r.get("context"), r.get("budget_w"), r.get("prefill_tok_s"),
                 r.get("decode_tok_s"), d.get("watts"), d.get("j_per_token"),
                 d.get("tokens_per_j"), d.get("j_per_token_above_idle"), g.get("p95"),
                 f"{under:.0%}" if under is not None else None]  # fmt: skip
        lines.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#eee}img{max-width:100%;display:block;margin:1em 0}.note{color:#a60}"""


def render_html(rows: Sequence[dict[str, Any]], images: dict[str, bytes], title: str) -> str:
    """One self-contained page: the plots as data URIs, then the table."""
    sensors = sorted({str(r["sensor"]) for r in rows if r.get("sensor")})
    parts = [
        "<!DOCTYPE html>",
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(rows)} rows; sensor {html.escape(', '.join(sensors) or 'none')}.</p>",
    ]
    if not images:
        parts.append(
            "<p class='note'>No plots: install matplotlib (pip install 'qwen-edge[report]')"
            " or measure with a power sensor.</p>"
        )
    for name, png in images.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    parts += [table(rows), "</body></html>"]
    return "\n".join(parts)


def write_report(
    rows: Sequence[dict[str, Any]], out: str | Path, png_dir: str | Path | None = None,
    title: str = "qwen-edge energy report",
) -> dict[str, Any]:  # fmt: skip
    """Writes the HTML page (and the PNGs into `png_dir` if given).

    Returns:
        {"html": path, "pngs": [paths], "plots": bool (False without matplotlib)}.
    """
    try:
        images = plots(rows)
        have_plots = True
    except MissingDependencyError:
        images, have_plots = {}, False
    out = Path(out)
    write_atomically(out, render_html(rows, images, title).encode("utf-8"))
    written = []
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for name, png in images.items():
            (Path(png_dir) / name).write_bytes(png)
            written.append(str(Path(png_dir) / name))
    return {"html": str(out), "pngs": written, "plots": have_plots}
