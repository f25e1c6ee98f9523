"""Long sessions' resource use (from the long-session audit): what a session keeps and writes
must not cost more, at each step, the longer it runs or the more it fills."""

from __future__ import annotations

import math
import random
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

from actors import secrets
from actors.recording import recorder
from actors.recording.recorder import Recorder
from protocols.records import METRIC_COLUMNS, metrics_document


def _rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """`n` metrics rows of every column: floats, text, None, a NaN (written as null)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {column: rng.uniform(-1e4, 1e5) for column in METRIC_COLUMNS}
        row["ts"] = f"2026-12-05T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
        row["mark_source"] = "quote" if i % 3 else 'a "quoted"\nvalue'
        row["elapsed_s"] = float(i)
        if i % 7 == 0:
            row["price"] = None
        if i % 11 == 0:
            row["equity"] = math.nan
        rows.append(row)
    return rows


SLICE = getattr(recorder, "METRICS_SLICE", 1000)


def test_metrics_json_is_the_whole_documents_json_whatever_the_number_of_rows(tmp_path: Path) -> None:
    # the reference: orjson's indented dump of the whole document at once (metrics.json's format)
    for n in (0, 1, 2, SLICE - 1, SLICE, SLICE + 1, 2 * SLICE + 17):
        rows = _rows(n)
        path = tmp_path / f"metrics-{n}.json"
        recorder.write_metrics_json(path, rows)
        expected = orjson.dumps(metrics_document(rows), option=orjson.OPT_INDENT_2) + b"\n"
        assert path.read_bytes() == expected, n
        assert not (tmp_path / f"metrics-{n}.json.tmp").exists()


def test_metrics_json_scrubs_a_secret_in_any_slice(tmp_path: Path) -> None:
    rows = _rows(2 * SLICE + 5)
    rows[0]["mark_source"] = rows[SLICE + 3]["mark_source"] = "key=s3cr3t-value"
    secrets.install({"BITUNIX_API_SECRET": "s3cr3t-value"})
    try:
        recorder.write_metrics_json(tmp_path / "metrics.json", rows)
    finally:
        secrets.install({})
    text = (tmp_path / "metrics.json").read_text()
    assert "s3cr3t-value" not in text
    assert text.count(f"key={secrets.MASK}") == 2


def test_writing_a_days_metrics_json_holds_a_slice_of_it_not_copies_of_the_whole(tmp_path: Path) -> None:
    # a day-long live session has 86,400 rows (one a heartbeat, a second): 38 MB of metrics.json,
    # which the writer held three times over (the JSON as bytes, as text, as bytes again). 20,000
    # rows here (about 12 MB): the memory allocated while writing stays under a third of the file
    # (a slice of 1,000 rows is about 0.6 MB; the old writer peaked at more than twice the file)
    record = Recorder(tmp_path)
    record.metrics = _rows(20_000)
    record.report = {"status": "ok"}
    tracemalloc.start()
    try:
        record._write_record()  # metrics.json, final_report.json
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        record._close_run_log()  # the session.log sink it added
    assert record.written
    size = (tmp_path / "metrics.json").stat().st_size
    assert size > 10_000_000
    assert peak < size / 3, (peak, size)
