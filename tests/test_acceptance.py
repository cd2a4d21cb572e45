"""The local acceptance statistics: the server's session file (lsp/acceptance.py), the report of
`wizardcoder-tpu stats` (lsp/stats_report.py) as text, JSON and HTML, and the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

from wizardcoder_tpu.lsp.acceptance import AcceptanceLog
from wizardcoder_tpu.lsp.stats_report import buckets, html_page, load, percentile, report, text_report


def session(folder: Path, name: str = "session-a.json") -> AcceptanceLog:
    return AcceptanceLog(folder / name)


def serve(log: AcceptanceLog, suggestion_id: str, language: str = "python", model: str = "m", source: str = "model",
          latency_ms: float = 100.0, chars: int = 10) -> None:
    log.served(suggestion_id, language=language, model=model, source=source, latency_ms=latency_ms, chars=chars)


def test_a_suggestion_counts_once_and_keeps_what_became_of_it(tmp_path):
    log = session(tmp_path)
    serve(log, "1", chars=12)
    serve(log, "1", chars=8, latency_ms=3.0)  # its rest, served again: the same suggestion
    assert log.shown("1") and log.partially_accepted("1", 4) and log.accepted("1", 8)
    assert not log.shown("unknown") and not log.accepted("unknown", 3)  # reports of other sessions' ids
    (record,) = log.records()
    assert (record["chars"], record["latency_ms"], record["accepted_chars"], record["partial_accepts"]) == (12, 100.0,
                                                                                                           12, 1)
    assert record["shown"] and record["accepted"] and not record["dismissed"]
    assert log.last_latency_ms == 3.0
    saved = json.loads((tmp_path / "session-a.json").read_text())
    assert saved["format"] == 1 and saved["suggestions"] == log.records()


def test_writes_are_deferred_to_the_schedule_and_whole(tmp_path):
    scheduled = []
    log = AcceptanceLog(tmp_path / "stats" / "session-b.json", lambda delay, fn: scheduled.append((delay, fn)))
    serve(log, "1")
    log.shown("1")
    assert len(scheduled) == 1 and not (tmp_path / "stats").exists()  # one write pending, none done yet
    scheduled[0][1]()
    assert json.loads((tmp_path / "stats" / "session-b.json").read_text())["suggestions"][0]["shown"]
    assert not list((tmp_path / "stats").glob(".*partial"))  # no temporary left behind


def test_the_report_by_language_model_and_source(tmp_path):
    first, second = session(tmp_path, "session-1.json"), session(tmp_path, "session-2.json")
    for i, latency in enumerate((50, 100, 150, 200)):
        serve(first, f"p{i}", latency_ms=latency, chars=10)
        first.shown(f"p{i}")
    first.accepted("p0", 10)
    first.partially_accepted("p1", 3)
    first.dismissed("p2")
    serve(second, "r1", language="rust", model="other", source="prefetch", latency_ms=5, chars=7)
    second.shown("r1")
    second.accepted("r1", 7)
    serve(second, "r2", language="rust", model="other", latency_ms=400)  # served, never shown
    (tmp_path / "session-broken.json").write_text("{not json")  # skipped, not fatal
    data = report(load(tmp_path))
    total = data["total"]
    assert (total["served"], total["shown"], total["accepted"], total["partiallyAccepted"], total["dismissed"]) == \
        (6, 5, 2, 1, 1)
    assert total["acceptanceRate"] == 0.6 and total["charsAccepted"] == 20
    assert total["latencyMs"] == {"p50": 100.0, "p90": 400.0, "p99": 400.0}
    assert data["byLanguage"]["python"]["acceptanceRate"] == 0.5
    assert data["byLanguage"]["rust"]["accepted"] == 1 and data["byModel"]["other"]["served"] == 2
    assert data["bySource"]["prefetch"]["latencyMs"]["p50"] == 5.0
    text = text_report(data)
    assert "language rust" in text and "model m" in text and "60%" in text


def test_percentiles_are_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert [percentile(list(range(1, 101)), p) for p in (50, 90, 99)] == [50, 90, 99]


def test_the_page_is_self_contained_with_one_chart_per_measure(tmp_path):
    log = session(tmp_path)
    for i in range(6):
        serve(log, str(i), latency_ms=100 + 10 * i)
        log.shown(str(i))
        if i % 2:
            log.accepted(str(i), 5)
    records = load(tmp_path)
    for j, record in enumerate(records):  # spread them over an hour
        record["time"] += j * 600
    page = html_page(records)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<script src" not in page
    body = page.split("<body>", 1)[1].split("</body>", 1)[0]
    charts = [ElementTree.fromstring(part[part.index("<svg"):].split("</div>")[0])
              for part in body.split('<div id="')[1:]]
    assert len(charts) == 3
    dots = [len(chart.findall("{http://www.w3.org/2000/svg}circle")) for chart in charts]
    assert dots == [len(buckets(records))] * 3 and dots[0] >= 2
    assert "3 shown" not in page and "6 shown, 3 taken (50%)" in page


def test_the_stats_command_prints_json_text_and_html(tmp_path):
    cache = tmp_path / "cache"
    log = AcceptanceLog(cache / "stats" / "session-x.json")
    serve(log, "1")
    log.shown("1")
    log.accepted("1", 10)
    env = {**os.environ, "WIZARDCODER_TPU_CACHE": str(cache)}
    command = [sys.executable, "-m", "wizardcoder_tpu.cli.main", "stats"]
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert json.loads(as_json.stdout)["total"]["acceptanceRate"] == 1.0
    as_text = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=True)
    assert "100%" in as_text.stdout and "language python" in as_text.stdout
    page = tmp_path / "stats.html"
    subprocess.run([*command, "--html", str(page)], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert "<svg" in page.read_text()
    empty = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True,
                           env={**os.environ, "WIZARDCODER_TPU_CACHE": str(tmp_path / "empty")})
    assert "no suggestions recorded yet" in empty.stdout
