"""The results as text tables, JSON, an SVG bar chart and a reST page for the docs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .common import Params, WorkloadResult

__all__ = [
    "NO_TARGET",
    "SUMMARY_COLUMNS",
    "fmt",
    "render_rst",
    "render_svg",
    "summary_rows",
    "to_json",
    "write_docs",
    "write_text",
]


def fmt(value: float | None, unit: str = "") -> str:
    """A number for people: thousands separators for large ones, 2-3 digits for small."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x" if value < 100 else f"{value:,.0f}x"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}" if unit else text


def _status(result: WorkloadResult) -> str:
    if result.error is not None:
        return "WRONG RESULT" if result.error.startswith("wrong result") else "FAILED"
    return "ok"


def environment_line(env: dict[str, Any]) -> str:
    """The environment in one sentence."""
    parts = [
        f"{env.get('processor')} ({env.get('machine')}, {env.get('cpus')} CPUs)",
        env.get("system", ""),
        f"Python {env.get('python')}",
        f"PostgreSQL {env.get('postgresql')} ({env.get('servers')}, fsync {env.get('fsync')})",
        f"shardsession {env.get('shardsession')}",
        f"SQLAlchemy {env.get('sqlalchemy')}",
        f"psycopg {env.get('psycopg')}",
    ]
    return "; ".join(p for p in parts if p)


def _table(
    rows: Sequence[Sequence[str]], out: TextIO, indent: str = "   ", text_columns: int = 1
) -> None:
    """Print ``rows`` (the first is the header) as columns; the first ``text_columns``
    are aligned left, the numbers right.
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i < text_columns else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        out.write(indent + "  ".join(cells).rstrip() + "\n")
        if n == 0:
            out.write(indent + "  ".join("-" * w for w in widths) + "\n")


#: the columns of :func:`summary_rows`
SUMMARY_COLUMNS = ["workload", "figure", "target", "measured", "met"]
#: what a workload without a target says in the summary
NO_TARGET = "no target (shown for information)"


def summary_rows(results: Sequence[WorkloadResult]) -> list[list[str]]:
    """The header, then one row per target: workload, what is measured, the target,
    the measured value, met; a failed workload gets one row saying so, a workload
    without targets one row saying that.
    """
    rows = [list(SUMMARY_COLUMNS)]
    for r in results:
        if r.error is not None:
            rows.append([r.name, "results must be correct", "correct", _status(r), "NO"])
            continue
        if not r.targets:
            rows.append([r.name, NO_TARGET, "-", "-", "-"])
        for t in r.targets:
            rows.append(
                [r.name, t.description, t.goal, fmt(t.value, t.unit), "yes" if t.met else "NO"]
            )
    return rows


def write_text(
    results: Sequence[WorkloadResult], env: dict[str, Any], params: Params, out: TextIO
) -> None:
    """Print every workload's table, its targets and checks, then the summary."""
    out.write("shardsession benchmarks, " + env.get("date", "") + "\n")
    out.write("   " + environment_line(env) + "\n")
    out.write(
        f"   rows {params.rows:,}, repeat {params.repeat} (best kept), ops {params.ops:,}, "
        f"memory rows {params.memory_rows:,}, threads {params.threads}\n"
    )
    for r in results:
        better = "higher" if r.higher_is_better else "lower"
        out.write(f"\n== {r.name}: {r.title} ({r.unit}, {better} is better)\n")
        if r.error is not None:
            out.write(f"   {_status(r)}: {r.error}\n")
            continue
        rows = [["side", r.unit, "vs SQLAlchemy", "vs psycopg"]]
        for f in r.figures:
            rows.append(
                [
                    f.label,
                    fmt(f.value),
                    fmt(r.speedup(f, "sqlalchemy"), "x"),
                    fmt(r.speedup(f, "psycopg"), "x"),
                ]
            )
        _table(rows, out)
        if not r.targets:
            out.write("   target: none (shown for information)\n")
        for t in r.targets:
            met = "met" if t.met else "MISSED"
            out.write(f"   target: {t.text}: measured {fmt(t.value, t.unit)}, {met}\n")
        for c in r.checks:
            out.write(f"   checked: {c}\n")
        for n in r.notes:
            out.write(f"   note: {n}\n")
    out.write("\n== summary: every target of the run (missed targets are reported, not errors)\n")
    _table(summary_rows(results), out, text_columns=3)


def to_json(
    results: Sequence[WorkloadResult], env: dict[str, Any], params: Params
) -> dict[str, Any]:
    """The whole run as one JSON-ready dict."""
    return {
        "environment": env,
        "parameters": vars(params),
        "workloads": [r.to_json() for r in results],
        "summary": [dict(zip(SUMMARY_COLUMNS, row)) for row in summary_rows(results)[1:]],
        "ok": all(r.error is None for r in results),
    }


# -- SVG ----------------------------------------------------------------------------

_W, _LEFT, _PLOT, _ROW = 1000, 340, 440, 34
_LO, _HI = 0.01, 100.0  # log-scale range of the ratios; values outside are clipped


def _x(value: float) -> float:
    import math

    v = min(max(value, _LO), _HI)
    return _LEFT + _PLOT * (math.log10(v) - math.log10(_LO)) / (math.log10(_HI) - math.log10(_LO))


def _wrap(text: str, width: int) -> list[str]:
    """Split a ``"; "``-separated sentence into lines of at most about ``width`` characters."""
    lines: list[str] = []
    for part in text.split("; "):
        if lines and len(lines[-1]) + len(part) + 2 <= width:
            lines[-1] += "; " + part
        else:
            lines.append(part)
    return lines


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_svg(results: Sequence[WorkloadResult], env: dict[str, Any]) -> str:
    """A horizontal bar per ratio target (log scale), the target marked, plus a legend."""
    bars = [(r, t) for r in results if r.error is None for t in r.targets if t.unit == "x"]
    absolute = [(r, t) for r in results if r.error is None for t in r.targets if t.unit != "x"]
    failed = [r for r in results if r.error is not None]
    header = [
        *_wrap(environment_line(env), 170),
        f"{env.get('date', '')}; log scale, clipped to 0.01x-100x",
    ]
    top = 46 + 13 * len(header)
    bottom = top + _ROW * max(1, len(bars))
    height = bottom + 50 + 18 * (len(absolute) + len(failed)) + 10
    s: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{_W}" height="{height}" fill="white"/>',
        '<text x="10" y="22" font-size="16" font-weight="bold">shardsession benchmarks: '
        "measured ratio against each target</text>",
    ]
    for n, line in enumerate(header):
        s.append(f'<text x="10" y="{40 + 13 * n}" font-size="10" fill="#444">{_esc(line)}</text>')
    for tick in (0.01, 0.1, 1, 10, 100):
        x = _x(tick)
        dash = "" if tick == 1 else ' stroke-dasharray="2,3"'
        colour = "#555" if tick == 1 else "#bbb"
        s.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}" '
            f'stroke="{colour}"{dash}/>'
        )
        s.append(
            f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" fill="#444">{tick:g}x</text>'
        )
    for i, (r, t) in enumerate(bars):
        y = top + i * _ROW
        colour = "#2e8b57" if t.met else "#c0392b"
        s.append(f'<text x="{_LEFT - 8}" y="{y + 13}" text-anchor="end">{_esc(r.name)}</text>')
        s.append(
            f'<text x="{_LEFT - 8}" y="{y + 25}" text-anchor="end" font-size="9" '
            f'fill="#555">{_esc(t.description)}</text>'
        )
        x0, x1 = _x(1.0), _x(t.value)
        s.append(
            f'<rect x="{min(x0, x1):.1f}" y="{y + 6}" width="{max(abs(x1 - x0), 2):.1f}" '
            f'height="18" fill="{colour}"/>'
        )
        xt = _x(t.bound)
        s.append(
            f'<line x1="{xt:.1f}" y1="{y + 2}" x2="{xt:.1f}" y2="{y + 28}" '
            'stroke="black" stroke-width="3"/>'
        )
        label = f"{fmt(t.value, 'x')} (target {t.goal})"
        s.append(f'<text x="{_LEFT + _PLOT + 10}" y="{y + 19}">{_esc(label)}</text>')
    y = bottom + 36
    legend = [("#2e8b57", "target met"), ("#c0392b", "target missed")]
    for n, (colour, label) in enumerate(legend):
        x = 10 + n * 150
        s.append(f'<rect x="{x}" y="{y - 10}" width="14" height="12" fill="{colour}"/>')
        s.append(f'<text x="{x + 20}" y="{y}">{label}</text>')
    s.append(
        f'<line x1="320" y1="{y - 12}" x2="320" y2="{y + 2}" stroke="black" stroke-width="3"/>'
    )
    s.append(f'<text x="328" y="{y}">the target; bars start at 1x (parity)</text>')
    for r, t in absolute:
        y += 18
        met = "met" if t.met else "MISSED"
        s.append(
            f'<text x="10" y="{y}">{_esc(r.name)}: {_esc(t.text)}: '
            f"{_esc(fmt(t.value, t.unit))}, {met}</text>"
        )
    for r in failed:
        y += 18
        s.append(f'<text x="10" y="{y}" fill="#c0392b">{_esc(r.name)}: {_status(r)}</text>')
    s.append("</svg>")
    return "\n".join(s) + "\n"


# -- reST ---------------------------------------------------------------------------


def _rst(text: str) -> str:
    """``text`` with reST's inline markup characters escaped, never an empty cell or a
    lone ``-`` (which reST would read as a bullet list).
    """
    for ch in ("\\", "*", "`", "|", "_"):
        text = text.replace(ch, "\\" + ch)
    return "n/a" if text in ("", "-") else text


def _list_table(title: str, rows: Sequence[Sequence[str]], widths: str) -> list[str]:
    out = [f".. list-table:: {title}", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in rows:
        for n, cell in enumerate(row):
            out.append(("   * - " if n == 0 else "     - ") + (_rst(cell) if cell else ""))
    out.append("")
    return out


def render_rst(results: Sequence[WorkloadResult], env: dict[str, Any], params: Params) -> str:
    """The results as reST (no section titles: it is included into benchmarks.rst)."""
    out = [
        ".. Generated by ``python -m bench --docs docs``; do not edit by hand.",
        "",
        f"Measured on {env.get('date')} with ``--rows {params.rows} --repeat {params.repeat} "
        f"--ops {params.ops} --memory-rows {params.memory_rows} --threads {params.threads}``.",
        "",
    ]
    env_rows = [["item", "value"], *([k, str(v)] for k, v in env.items() if v is not None)]
    out += _list_table("Environment", env_rows, "20 80")
    out += _list_table("Targets", summary_rows(results), "12 50 12 14 12")
    figures = [["workload", "side", "figure", "vs SQLAlchemy", "vs psycopg"]]
    for r in results:
        if r.error is not None:
            figures.append([r.name, _status(r), "-", "-", "-"])
            continue
        for n, f in enumerate(r.figures):
            figures.append(
                [
                    r.name if n == 0 else "",
                    f.label,
                    fmt(f.value, r.unit),
                    fmt(r.speedup(f, "sqlalchemy"), "x"),
                    fmt(r.speedup(f, "psycopg"), "x"),
                ]
            )
    out += _list_table(
        "Figures (best of the repetitions; vs = how many times faster)", figures, "12 40 18 15 15"
    )
    out += ["How each workload ran, and what was checked:", ""]
    for r in results:
        lines = [*r.notes, *(f"Checked: {c}." for c in r.checks)]
        if r.error is not None:
            lines.append(r.error)
        if lines:
            out.append(f"* **{r.name}**: " + " ".join(_rst(line) for line in lines))
    out.append("")
    return "\n".join(out)


def write_docs(
    results: Sequence[WorkloadResult], env: dict[str, Any], params: Params, docs: Path
) -> list[Path]:
    """Write ``DOCS/_static/benchmarks.svg`` and ``DOCS/benchmarks_results.rst``."""
    svg = docs / "_static" / "benchmarks.svg"
    rst = docs / "benchmarks_results.rst"
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(render_svg(results, env), encoding="utf-8")
    rst.write_text(render_rst(results, env, params), encoding="utf-8")
    return [svg, rst]


def dumps(results: Sequence[WorkloadResult], env: dict[str, Any], params: Params) -> str:
    """:func:`to_json` as indented text."""
    return json.dumps(to_json(results, env, params), indent=2)
