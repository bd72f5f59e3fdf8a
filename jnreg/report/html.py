"""The parts every page is made of: the self-contained shell, tables, values tagged for reading back, SVG charts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from jnreg import __version__

# Nothing may leave the page: no fetch, image, font or frame from anywhere, only what is inline.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
COLORS = {"loss": "#1f6fd1", "eval_loss": "#d1541f", "learning_rate": "#2a9d4b", "tokens_per_second": "#8a3ad1"}

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#fff}
header,main{max-width:1180px;margin:0 auto;padding:0 20px}
header{padding-top:18px;border-bottom:1px solid #d8dee4}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #eaeef2}
h3{font-size:15px;margin:18px 0 6px}
nav a{margin-right:14px}a{color:#0a58ca}
table{border-collapse:collapse;margin:6px 0 12px;font-variant-numeric:tabular-nums}
td,th{border:1px solid #d8dee4;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.n{text-align:right}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-width:640px;max-height:14em;overflow:auto}
.muted{color:#57606a}.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#dafbe1;color:#116329}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;position:relative}figcaption{font-weight:600;margin-bottom:2px}
svg text{font:11px system-ui,sans-serif;fill:#57606a}
.tip{position:absolute;pointer-events:none;background:#1b1f24;color:#fff;padding:2px 6px;border-radius:3px;
font-size:12px;white-space:nowrap;display:none}
details{margin:6px 0}summary{cursor:pointer;color:#0a58ca}
"""

# Hover: the nearest logged step under the pointer, its value in a tip, from the numbers the chart was drawn from.
SCRIPT = """
(function(){
  var data = JSON.parse(document.getElementById('jnreg-chart-data').textContent);
  function fmt(v){
    return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : +v.toPrecision(4);
  }
  document.querySelectorAll('figure[data-chart]').forEach(function(fig){
    var chart = data[fig.getAttribute('data-chart')], svg = fig.querySelector('svg');
    var tip = fig.querySelector('.tip'), guide = svg.querySelector('.guide');
    svg.addEventListener('mousemove', function(event){
      var box = svg.getBoundingClientRect(), x = (event.clientX - box.left) * chart.width / box.width;
      var step = chart.x0 + (x - chart.left) / chart.plot * (chart.x1 - chart.x0), lines = [];
      chart.series.forEach(function(s){
        var lo = 0, hi = s.steps.length - 1;
        if (hi < 0) return;
        while (lo < hi) { var mid = (lo + hi) >> 1; if (s.steps[mid] < step) lo = mid + 1; else hi = mid; }
        if (lo > 0 && step - s.steps[lo - 1] < s.steps[lo] - step) lo -= 1;
        lines.push(s.name + ' ' + fmt(s.values[lo]) + ' @ ' + chart.xname + ' ' + s.steps[lo]);
      });
      tip.textContent = lines.join('  \\u00b7  ');
      tip.style.display = 'block';
      tip.style.left = Math.min(event.clientX - box.left + 12, box.width - 180) + 'px';
      tip.style.top = (event.clientY - box.top - 28) + 'px';
      guide.setAttribute('x1', x); guide.setAttribute('x2', x); guide.style.display = 'inline';
    });
    svg.addEventListener('mouseleave', function(){ tip.style.display = 'none'; guide.style.display = 'none'; });
  });
})();
"""


def fmt(value: Any) -> str:
    """A number as the page shows it: integers whole, other numbers to four significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def value(key: str, number: Any, *, cls: str = "n") -> str:
    """A table cell holding ``number``, tagged with where it comes from and its exact value, for reading back."""
    exact = escape(json.dumps(number), quote=True)
    return f'<td class="{cls}" data-key="{escape(key, quote=True)}" data-value="{exact}">{escape(fmt(number))}</td>'


def cell(text: Any, *, pre: bool = False) -> str:
    if pre:
        return f"<td><pre>{escape(str(text))}</pre></td>"
    return f"<td>{escape(fmt(text))}</td>"


def code(text: Any) -> str:
    return f"<td><code>{escape(str(text))}</code></td>"


def table(header: Sequence[str], rows: Iterable[str], *, ident: str | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    attr = f' id="{ident}"' if ident else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pairs(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table of a name and a ready-made cell."""
    return "<table>" + "".join(f"<tr><th>{escape(name)}</th>{html}</tr>" for name, html in rows) + "</table>"


def page(title: str, body: str, charts: dict[str, Any] | None = None) -> bytes:
    """A whole page: styles, data and script inline, so it opens from a file or an object store as it is."""
    data = json.dumps(charts or {}, separators=(",", ":")).replace("</", "<\\/")
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="generator" content="jnreg {escape(__version__)}">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}"
        f'<script type="application/json" id="jnreg-chart-data">{data}</script>'
        f"<script>{SCRIPT}</script></body></html>\n"
    ).encode()


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def line_chart(
    name: str, title: str, series: list[tuple[str, list[int], list[float]]], *, xname: str = "step"
) -> tuple[str, dict[str, Any]]:
    """An SVG line chart of (series name, steps, values), and what the hover script needs to read it."""
    width, height, left, right, top, bottom = 560, 220, 58, 12, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    steps = [s for _, xs, _ in series for s in xs]
    values = [v for _, _, vs in series for v in vs]
    if not steps:
        return "", {}
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.05, y1 + (abs(y1) or 1) * 0.05
    span_x = (x1 - x0) or 1

    def px(step: float) -> float:
        return left + (step - x0) / span_x * plot_w

    def py(number: float) -> float:
        return top + (y1 - number) / (y1 - y0) * plot_h

    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fbfcfd" stroke="#d8dee4"/>',
    ]
    for tick in _ticks(y0, y1):
        y = py(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(float(tick)))}</text>')
    for tick in _ticks(x0, x1):
        parts.append(f'<text x="{px(tick):.1f}" y="{height - 8}" text-anchor="middle">{round(tick)}</text>')
    for label, xs, vs in series:
        color = COLORS.get(label, "#1f6fd1")
        points = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, vs, strict=True))
        if len(xs) == 1:
            parts.append(f'<circle cx="{px(xs[0]):.1f}" cy="{py(vs[0]):.1f}" r="3" fill="{color}"/>')
        else:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        if len(xs) <= 60:
            parts.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="2.5" fill="{color}"/>'
                for x, v in zip(xs, vs, strict=True)
            )
    parts.append(f'<line class="guide" y1="{top}" y2="{top + plot_h}" stroke="#57606a" style="display:none"/>')
    parts.append("</svg>")
    legend = " ".join(
        f'<span style="color:{COLORS.get(label, "#1f6fd1")}">■</span> {escape(label)}' for label, _, _ in series
    )
    html = (
        f'<figure data-chart="{name}"><figcaption>{escape(title)} <span class="muted">{legend}</span></figcaption>'
        + "".join(parts)
        + '<div class="tip"></div></figure>'
    )
    data = {
        "width": width,
        "left": left,
        "plot": plot_w,
        "x0": x0,
        "x1": x0 + span_x,
        "xname": xname,
        "series": [{"name": label, "steps": xs, "values": vs} for label, xs, vs in series],
    }
    return html, data


def bar_chart(title: str, edges: list[int], counts: list[int]) -> str:
    """An SVG histogram: one bar per bin, its range and count in the bar's tooltip."""
    width, height, left, bottom, top = 560, 200, 44, 28, 10
    plot_w, plot_h = width - left - 12, height - top - bottom
    peak = max(counts) or 1
    bar_w = plot_w / len(counts)
    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    for index, count in enumerate(counts):
        h = count / peak * plot_h
        x = left + index * bar_w
        parts.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
            f'fill="#1f6fd1"><title>{edges[index]}–{edges[index + 1] - 1} tokens: {count} rows</title></rect>'
        )
    parts.append(f'<text x="{left - 6}" y="{top + 8}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}">{edges[0]}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{edges[-1]} tokens</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}</figure>"
