"""``wizardcoder-tpu stats``: the acceptance statistics of every session on this machine
(``lsp/acceptance.py`` writes them), as a table, as JSON (``--json``), or as a self-contained
HTML page with charts over time (``--html FILE``: inline SVG, no script, nothing fetched).

The acceptance rate is the share of shown suggestions that the user took, whole or in part.
Latency is from the request's arrival at the server to its answer, for the first answer of each
suggestion (model runs, cache and prefetch hits alike; ``bySource`` tells them apart).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .acceptance import FORMAT, stats_dir

PERCENTILES = (50, 90, 99)


def load(folder: Path | None = None) -> list[dict[str, Any]]:
    """The suggestions of every readable session file in ``folder`` (default: the cache's), oldest first."""
    folder = folder or stats_dir()
    records: list[dict[str, Any]] = []
    for path in sorted(folder.glob("session-*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a file another process is replacing right now is whole or absent; any other is skipped
        if isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("suggestions"), list):
            records.extend(r for r in data["suggestions"] if isinstance(r, dict))
    records.sort(key=lambda r: r.get("time", 0))
    return records


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts, rate, characters and latency percentiles of ``records``."""
    records = list(records)
    shown = [r for r in records if r.get("shown")]
    taken = [r for r in shown if r.get("accepted") or r.get("partial_accepts")]
    latencies = [float(r["latency_ms"]) for r in records if isinstance(r.get("latency_ms"), (int, float))]
    return {
        "served": len(records),
        "shown": len(shown),
        "accepted": sum(1 for r in shown if r.get("accepted")),
        "partiallyAccepted": sum(1 for r in shown if r.get("partial_accepts") and not r.get("accepted")),
        "dismissed": sum(1 for r in records if r.get("dismissed")),
        "acceptanceRate": round(len(taken) / len(shown), 4) if shown else None,
        "charsSuggested": sum(int(r.get("chars", 0)) for r in shown),
        "charsAccepted": sum(int(r.get("accepted_chars", 0)) for r in records),
        "latencyMs": {f"p{p}": percentile(latencies, p) for p in PERCENTILES},
    }


def _grouped(records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[str(record.get(key) or "?")].append(record)
    return {name: summarize(group) for name, group in sorted(groups.items())}


def report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``stats --json`` prints."""
    return {"total": summarize(records), "byLanguage": _grouped(records, "language"),
            "byModel": _grouped(records, "model"), "bySource": _grouped(records, "source"),
            "first": records[0]["time"] if records else None, "last": records[-1]["time"] if records else None}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"
    return str(value)


def text_report(data: dict[str, Any]) -> str:
    """The table that ``stats`` prints."""
    total = data["total"]
    if not total["served"]:
        return f"no suggestions recorded yet (statistics live in {stats_dir()})\n"
    lines = [f"{total['served']} suggestions from {time.strftime('%Y-%m-%d %H:%M', time.localtime(data['first']))} "
             f"to {time.strftime('%Y-%m-%d %H:%M', time.localtime(data['last']))}", ""]
    header = ("", "shown", "accepted", "partial", "rate", "chars accepted", "p50 ms", "p90 ms", "p99 ms")
    rows = [header]

    def row(name: str, s: dict[str, Any]) -> tuple[str, ...]:
        rate = f"{s['acceptanceRate'] * 100:.0f}%" if s["acceptanceRate"] is not None else "-"
        return (name, str(s["shown"]), str(s["accepted"]), str(s["partiallyAccepted"]), rate,
                str(s["charsAccepted"]), *(_cell(s["latencyMs"][f"p{p}"]) for p in PERCENTILES))

    rows.append(row("all", total))
    for title, key in (("language", "byLanguage"), ("model", "byModel"), ("source", "bySource")):
        rows.extend(row(f"{title} {name}", s) for name, s in data[key].items())
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines) + "\n"


# The page ----------------------------------------------------------------------------------------
def buckets(records: list[dict[str, Any]], count: int = 24) -> list[dict[str, Any]]:
    """``records`` in up to ``count`` equal time spans: each span's summary and its start."""
    if not records:
        return []
    first, last = records[0]["time"], records[-1]["time"]
    width = max((last - first) / count, 1.0)
    spans: list[list[dict[str, Any]]] = [[] for _ in range(count)]
    for record in records:
        spans[min(count - 1, int((record["time"] - first) / width))].append(record)
    return [{"start": first + i * width, **summarize(span)} for i, span in enumerate(spans) if span]


def _svg_chart(title: str, points: list[tuple[float, float | None]], unit: str, y_max: float | None = None,
               width: int = 640, height: int = 220) -> str:
    """A line chart with dots of ``points`` (x: epoch seconds), as inline SVG."""
    values = [(x, y) for x, y in points if y is not None]
    pad_l, pad_r, pad_t, pad_b = 56, 16, 28, 36
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b
    parts = [f'<svg class="chart" role="img" aria-label="{html.escape(title)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{pad_l}" y="18" class="title">{html.escape(title)}</text>']
    if not values:
        parts.append(f'<text x="{pad_l}" y="{pad_t + inner_h / 2}">no data</text></svg>')
        return "".join(parts)
    xs = [x for x, _ in values]
    x0, x1 = min(xs), max(xs)
    top = y_max if y_max is not None else max(y for _, y in values) * 1.1 or 1.0

    def px(x: float) -> float:
        return pad_l + (inner_w * (x - x0) / (x1 - x0) if x1 > x0 else inner_w / 2)

    def py(y: float) -> float:
        return pad_t + inner_h - inner_h * min(y, top) / top

    for i in range(5):  # grid and y labels
        y = top * i / 4
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + inner_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="grid"/>'
                     f'<text x="{pad_l - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_cell(float(y))}{unit}</text>')
    for x, anchor in ((x0, "start"), (x1, "end")):
        parts.append(f'<text x="{px(x):.1f}" y="{height - 12}" text-anchor="{anchor}">'
                     f'{time.strftime("%m-%d %H:%M", time.localtime(x))}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(values))
    parts.append(f'<path d="{path}" class="line"/>')
    parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" class="dot"><title>{_cell(float(y))}{unit}'
                 f'</title></circle>' for x, y in values)
    parts.append("</svg>")
    return "".join(parts)


def _html_table(data: dict[str, Any]) -> str:
    lines = text_report(data).splitlines()
    return "<pre>" + html.escape("\n".join(lines)) + "</pre>"


def html_page(records: list[dict[str, Any]]) -> str:
    """The ``stats --html`` page: acceptance and latency over time, then the table."""
    data = report(records)
    spans = buckets(records)
    rate = [(s["start"], None if s["acceptanceRate"] is None else s["acceptanceRate"] * 100) for s in spans]
    p50 = [(s["start"], s["latencyMs"]["p50"]) for s in spans]
    p90 = [(s["start"], s["latencyMs"]["p90"]) for s in spans]
    total = data["total"]
    headline = ("no suggestions recorded yet" if not total["served"] else
                f"{total['shown']} shown, {total['accepted'] + total['partiallyAccepted']} taken "
                f"({_cell((total['acceptanceRate'] or 0) * 100)}%), {total['charsAccepted']} characters accepted, "
                f"latency p50 {_cell(total['latencyMs']['p50'])} ms")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wizardcoder-tpu: acceptance statistics</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #1f2328; background: #fff; }}
h1 {{ font-size: 20px; }} .chart {{ display: block; margin: 12px 0 20px; border: 1px solid #d0d7de; }}
.title {{ font-weight: 600; font-size: 13px; }} text {{ font-size: 11px; fill: #57606a; }}
.grid {{ stroke: #eaeef2; }} .line {{ fill: none; stroke: #0969da; stroke-width: 2; }} .dot {{ fill: #0969da; }}
#latency-p90 .line {{ stroke: #bf8700; }} #latency-p90 .dot {{ fill: #bf8700; }}
pre {{ background: #f6f8fa; padding: 12px; }}
</style></head><body>
<h1>wizardcoder-tpu: acceptance statistics</h1>
<p id="headline">{html.escape(headline)}</p>
<div id="acceptance">{_svg_chart("Acceptance rate over time (% of shown suggestions taken)", rate, "%", 100.0)}</div>
<div id="latency-p50">{_svg_chart("Latency over time, p50 (ms)", p50, " ms")}</div>
<div id="latency-p90">{_svg_chart("Latency over time, p90 (ms)", p90, " ms")}</div>
{_html_table(data)}
<script type="application/json" id="data">{html.escape(json.dumps(data))}</script>
</body></html>
"""


def main(as_json: bool, html_file: str | None, folder: Path | None = None) -> int:
    """The ``stats`` subcommand."""
    records = load(folder)
    if html_file:
        from ..inference.atomic import write_text

        write_text(Path(html_file), html_page(records))
        print(f"wrote {html_file} ({len(records)} suggestions)")
        return 0
    data = report(records)
    print(json.dumps(data, indent=2) if as_json else text_report(data), end="" if not as_json else "\n")
    return 0
