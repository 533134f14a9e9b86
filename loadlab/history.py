"""Read what a run left on disk: Locust's `_stats_history.csv` and the lab's resource samples.

Two sources, both optional except the CSV:

* Locust's stats history (`--csv PREFIX --csv-full-history`): one row per second per
  request name plus an `Aggregated` row. We keep the Aggregated rows. Its `Total Request
  Count`/`Total Failure Count` are cumulative, so per-interval rates and error ratios come
  from their deltas. Its `Requests/s` is a ~10 s moving average lagging ~2 s behind
  (`StatsEntry.current_rps`), so we do not use it. With `--csv-full-history` the percentile
  columns are Locust's *current* percentiles (a sliding ~10 s window,
  `get_current_response_time_percentile`); without it they are cumulative since the start.
* `samples.jsonl`, written by `loadlab.sampler`: one line per scrape of each source
  (`sidecar`, `target`, `locust`), holding the scraped Prometheus samples.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loadlab.contract.histograms import bucket_deltas, histogram_quantile

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class HistoryRow:
    """One Aggregated row of Locust's stats history."""

    t: float
    users: int
    requests: int  # cumulative
    failures: int  # cumulative
    p50_ms: float | None
    p95_ms: float | None
    avg_ms: float | None = None  # cumulative mean response time since the start


@dataclass
class LocustHistory:
    rows: list[HistoryRow]
    # True when the file has per-name rows besides Aggregated, i.e. it was written with
    # --csv-full-history, whose percentile columns are the ~10 s sliding window.
    windowed_percentiles: bool


def _num(value: str | None) -> float | None:
    if value is None or value == "" or value == "N/A":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def read_stats_history(path: Path | str) -> LocustHistory:
    """Parse a Locust `_stats_history.csv` into its Aggregated rows, one per timestamp."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Locust stats history here (run Locust with --csv PREFIX --csv-full-history)")
    by_time: dict[float, HistoryRow] = {}
    per_name = False
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        check_columns(path, reader.fieldnames or [])
        for rec in reader:
            if rec.get("Name") != AGGREGATED:
                per_name = True
                continue
            row = history_row(rec)
            if row is not None:  # a later row with the same (integer) timestamp is the fresher one
                by_time[row.t] = row
    rows = [by_time[t] for t in sorted(by_time)]
    return LocustHistory(rows=rows, windowed_percentiles=per_name)


def check_columns(path: Path, columns: Iterable[str]) -> None:
    """ValueError unless the header has the columns the analysis reads."""
    missing = {"Timestamp", "User Count", "Name", "Total Request Count", "Total Failure Count"} - set(columns)
    if missing:
        raise ValueError(f"{path}: not a Locust stats history CSV (missing columns: {', '.join(sorted(missing))})")


def history_row(rec: dict) -> HistoryRow | None:
    """One Aggregated record of the CSV (a csv.DictReader dict) as a row. None for a record without a
    timestamp, or a torn one (a run still writing, or killed mid-line): the reader leaves the fields
    it did not get None, and a counter cut short would read as a drop."""
    if None in rec.values():
        return None
    t = _num(rec["Timestamp"])
    if t is None:
        return None
    return HistoryRow(
        t=t,
        users=int(_num(rec["User Count"]) or 0),
        requests=int(_num(rec["Total Request Count"]) or 0),
        failures=int(_num(rec["Total Failure Count"]) or 0),
        p50_ms=_num(rec.get("50%")),
        p95_ms=_num(rec.get("95%")),
        avg_ms=_num(rec.get("Total Average Response Time")),
    )


# ---------------------------------------------------------------- resource samples

Labels = dict[str, str]


@dataclass
class Scrape:
    t: float
    source: str
    samples: list[tuple[str, Labels, float]]


@dataclass
class Samples:
    """All scrapes of a run, by source, in time order."""

    by_source: dict[str, list[Scrape]] = field(default_factory=dict)

    def scrapes(self, source: str) -> list[Scrape]:
        return self.by_source.get(source, [])

    def __bool__(self) -> bool:
        return any(self.by_source.values())


def iter_sample_lines(path: Path) -> Iterator[dict]:
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                # A run killed mid-write leaves a torn last line; everything before it is good.
                continue


def read_samples(path: Path | str) -> Samples:
    """Load `samples.jsonl`; a missing file gives empty Samples (plain Locust CSV runs)."""
    path = Path(path)
    result = Samples()
    if not path.is_file():
        return result
    for rec in iter_sample_lines(path):
        scrape = scrape_of(rec)
        if scrape is not None:
            result.by_source.setdefault(scrape.source, []).append(scrape)
    for scrapes in result.by_source.values():
        scrapes.sort(key=lambda s: s.t)
    return result


def scrape_of(rec: dict) -> Scrape | None:
    """One line of `samples.jsonl` as a Scrape (None for a failed scrape)."""
    if not rec.get("ok", True):
        return None
    return Scrape(t=float(rec["t"]), source=rec["source"],
                  samples=[(name, labels, float(value)) for name, labels, value in rec.get("samples", [])])


def _matches(labels: Labels, match: Labels | None) -> bool:
    return not match or all(labels.get(k) == v for k, v in match.items())


def scrape_value(scrape: Scrape, name: str, match: Labels | None = None) -> float | None:
    """One scrape's value of `name`: summed over every sample whose labels include `match`.

    None when the scrape has no such sample, so a missing series stays missing instead of
    turning into a zero.
    """
    found = False
    total = 0.0
    for sname, labels, value in scrape.samples:
        if sname == name and _matches(labels, match):
            total += value
            found = True
    return total if found else None


def series(scrapes: Iterable[Scrape], name: str, match: Labels | None = None) -> list[tuple[float, float]]:
    """(t, scrape_value) of every scrape that has `name` (a scrape without it contributes no point)."""
    points = []
    for scrape in scrapes:
        value = scrape_value(scrape, name, match)
        if value is not None:
            points.append((scrape.t, value))
    return points


def histogram_buckets(scrape: Scrape, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name` summed over all its label sets, by `le`."""
    buckets: dict[float, float] = {}
    bucket_name = name + "_bucket"
    for sname, labels, value in scrape.samples:
        if sname == bucket_name and "le" in labels:
            le = float(labels["le"])  # "+Inf" parses to inf
            buckets[le] = buckets.get(le, 0.0) + value
    return buckets


def quantile_between(q: float, first: Scrape, last: Scrape, name: str) -> float | None:
    """Quantile q of the observations histogram `name` counted between two scrapes (its unit, e.g. seconds).

    Bucket deltas, not the cumulative counts. None when either scrape lacks the histogram, or
    when a bucket count went down: the stats were reset in between (Locust resets them when a
    new test starts), and deltas across a reset are not counts of anything.
    """
    before, after = histogram_buckets(first, name), histogram_buckets(last, name)
    deltas = bucket_deltas(before, after) if before and after else None
    return None if deltas is None else histogram_quantile(q, deltas)
