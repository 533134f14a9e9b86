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

Damaged input never changes a verdict silently. Each line is read on its own (Locust writes one
row per line), so a stray quote damages one row, not the rest of the file, and every row that
cannot be read (not UTF-8, a broken quote, a wrong field count, a number that is not one, a JSON
line that is not a scrape record) raises `DamagedInput` naming the file and line, or, with a
lenient `Damage`, is skipped and counted. One exception: a *torn final line*, the last line of a
file that a killed process left half-written (it has no line end), is left out without an error
and said in the verdict's notes; the lines before it are whole.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadlab.contract.histograms import bucket_deltas, histogram_quantile
from loadlab.contract.names import LOCUST_JOB, LOCUST_STATS_TIMESTAMP

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


class DamagedInput(ValueError):
    """A row of an input file cannot be read; the message names the file and the line."""


@dataclass
class Damage:
    """What reading a run's files met: unreadable rows raise `DamagedInput` at once, or, when
    `lenient`, are skipped and listed; torn final lines (a killed writer's) are always left out and listed."""

    lenient: bool = False
    skipped: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)

    def found(self, path: Path | str, line: int, what: str) -> None:
        where = f"{path} line {line}: {what}"
        if not self.lenient:
            raise DamagedInput(where)
        self.skipped.append(where)


def _lines(path: Path, damage: Damage) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, is a torn last line) of each non-empty line, decoded as UTF-8 line by line
    (a bad byte damages its own line only)."""
    raw = path.read_bytes()
    chunks = raw.split(b"\n")
    last = len(chunks) - 1  # the text after the last "\n": empty unless the file ends mid-line
    for i, chunk in enumerate(chunks):
        chunk = chunk.rstrip(b"\r")
        if not chunk.strip():
            continue
        torn = i == last  # no line end after it: the writer stopped there
        try:
            yield i + 1, chunk.decode("utf-8"), torn
        except UnicodeDecodeError as exc:
            if torn:
                damage.torn.append(f"{path} line {i + 1}")
                continue
            damage.found(path, i + 1, f"not UTF-8 text (byte 0x{chunk[exc.start]:02x} at column {exc.start + 1})")


def read_csv_rows(path: Path | str, required: Sequence[str], damage: Damage | None = None,
                  what: str = "CSV") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file written one row per line, each line checked: its quoting, and
    as many fields as the header. ValueError when the header lacks a `required` column."""
    path = Path(path)
    damage = damage or Damage()
    header: list[str] | None = None
    for line_no, text, torn in _lines(path, damage):
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            fields, problem = [], f"not a CSV row ({exc})"
        else:
            problem = ""
        if header is None:
            if problem:
                raise DamagedInput(f"{path} line {line_no}: the header is {problem}")
            header = fields
            missing = [c for c in required if c not in header]
            if missing:
                raise ValueError(f"{path}: not a {what} (missing columns: {', '.join(missing)})")
            continue
        if not problem and len(fields) != len(header):
            problem = f"{len(fields)} fields where the header has {len(header)} (a stray quote or comma?)"
        if problem:
            if torn:
                damage.torn.append(f"{path} line {line_no}")
            else:
                damage.found(path, line_no, problem)
            continue
        yield line_no, dict(zip(header, fields))
    if header is None:
        raise ValueError(f"{path}: empty, not a {what}")


def _num(value: str | None) -> float | None:
    """A number of Locust's CSV; None for an empty or "N/A" cell. ValueError for anything else."""
    if value is None or value == "" or value == "N/A":
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


HISTORY_REQUIRED = ("Timestamp", "User Count", "Name", "Total Request Count", "Total Failure Count")


def read_stats_history(path: Path | str, damage: Damage | None = None) -> LocustHistory:
    """Parse a Locust `_stats_history.csv` into its Aggregated rows, one per timestamp."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Locust stats history here (run Locust with --csv PREFIX --csv-full-history)")
    damage = damage or Damage()
    by_time: dict[float, HistoryRow] = {}
    per_name = False
    for line_no, rec in read_csv_rows(path, HISTORY_REQUIRED, damage, what="Locust stats history CSV"):
        if rec["Name"] != AGGREGATED:
            per_name = True
            continue
        try:
            row = parse_history_row(rec)
        except ValueError as exc:
            damage.found(path, line_no, f"an Aggregated row with a value that is not a number ({exc})")
            continue
        # A later row with the same (integer) timestamp is the fresher one.
        by_time[row.t] = row
    rows = [by_time[t] for t in sorted(by_time)]
    return LocustHistory(rows=rows, windowed_percentiles=per_name)


def _required(value: float | None) -> float:
    if value is None:
        raise ValueError("an empty cell where a count or time must be")
    return value


def parse_history_row(rec: dict) -> HistoryRow:
    """One Aggregated record of the CSV as a row; ValueError (what is wrong) when a cell is no number."""
    t, users, requests, failures = (_num(rec[c]) for c in ("Timestamp", "User Count", "Total Request Count",
                                                            "Total Failure Count"))
    return HistoryRow(
        t=_required(t),
        users=int(_required(users)),
        requests=int(_required(requests)),
        failures=int(_required(failures)),
        p50_ms=_num(rec.get("50%")),
        p95_ms=_num(rec.get("95%")),
        avg_ms=_num(rec.get("Total Average Response Time")),
    )


def check_columns(path: Path, columns: Iterable[str]) -> None:
    """ValueError unless the header has the columns the analysis reads."""
    missing = set(HISTORY_REQUIRED) - set(columns)
    if missing:
        raise ValueError(f"{path}: not a Locust stats history CSV (missing columns: {', '.join(sorted(missing))})")


def history_row(rec: dict) -> HistoryRow | None:
    """One Aggregated record of a CSV still being written (the live view): None for a torn record (a
    run still writing, or killed mid-line: the reader leaves the fields it did not get None, and a
    counter cut short would read as a drop) or one that is no row; the final analysis names those."""
    if None in rec.values():
        return None
    try:
        return parse_history_row(rec)
    except ValueError:
        return None


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
    # The sampler's failed scrapes, by source: (time, error). A remote source that stopped
    # answering mid-run shows here (loadlab.remote).
    failures: dict[str, list[tuple[float, str]]] = field(default_factory=dict)

    def scrapes(self, source: str) -> list[Scrape]:
        return self.by_source.get(source, [])

    def __bool__(self) -> bool:
        return any(self.by_source.values())


def iter_sample_lines(path: Path, damage: Damage | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each line of `samples.jsonl` that is a JSON object. A run killed
    mid-write leaves a torn last line: it is left out (and listed in `damage.torn`); any other line
    that is not a JSON object is damage."""
    damage = damage or Damage()
    for line_no, text, torn in _lines(path, damage):
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            if torn:
                damage.torn.append(f"{path} line {line_no}")
            else:
                damage.found(path, line_no, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(rec, dict):
            damage.found(path, line_no, f"a JSON {type(rec).__name__}, not a scrape record (an object)")
            continue
        yield line_no, rec


# How far a source's own timestamp may lie from the scrape's and still be believed: a loop stalled
# this long would have failed the scrape; a later one is a clock gone wrong.
STATS_TIME_MAX_AGE_S = 60.0
STATS_TIME_MAX_AHEAD_S = 1.0


def data_time(t: float, source: str, samples: Sequence[tuple[str, Labels, float]]) -> float:
    """When a scrape's values were current: Locust's exporter says so (LOCUST_STATS_TIMESTAMP, as
    old as its last render or its workers' last reports), which a rate over a few seconds needs;
    any other source's values are the scrape's, at `t`."""
    if source == LOCUST_JOB:
        for name, _, value in samples:
            if name == LOCUST_STATS_TIMESTAMP:
                if t - STATS_TIME_MAX_AGE_S <= value <= t + STATS_TIME_MAX_AHEAD_S:
                    return value
                break
    return t


def _scrape(rec: dict[str, Any]) -> Scrape:
    """A sampler record as a Scrape; ValueError (what is wrong) for anything else."""
    t, source, samples = rec.get("t"), rec.get("source"), rec.get("samples", [])
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f'"t" must be a time in seconds, got {t!r}')
    if not isinstance(source, str):
        raise ValueError(f'"source" must be a string, got {source!r}')
    if not isinstance(samples, list):
        raise ValueError(f'"samples" must be a list, got {type(samples).__name__}')
    # Cheap checks only (a long run has millions of samples): the shape, name and labels' types, and
    # a value float() takes; whatever fails them is named by the first sample that does.
    try:
        parsed = [(name, labels, float(value)) for name, labels, value in samples
                  if type(name) is str and type(labels) is dict]
    except (TypeError, ValueError):
        parsed = []
    if len(parsed) != len(samples):
        bad = next((x for x in samples if not _is_sample(x)), samples[0] if samples else None)
        raise ValueError(f"a sample must be [name, {{label: value}}, number], got {json.dumps(bad)[:80]}")
    return Scrape(t=data_time(float(t), source, parsed), source=source, samples=parsed)


def _is_sample(value: Any) -> bool:
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], dict)):
        return False
    try:
        float(value[2])
    except (TypeError, ValueError):
        return False
    return True


def read_samples(path: Path | str, damage: Damage | None = None) -> Samples:
    """Load `samples.jsonl`; a missing file gives empty Samples (plain Locust CSV runs)."""
    path = Path(path)
    damage = damage or Damage()
    result = Samples()
    if not path.is_file():
        return result
    for line_no, rec in iter_sample_lines(path, damage):
        if not rec.get("ok", True):  # the sampler's record of a failed scrape: nothing measured then
            t, source = rec.get("t"), rec.get("source")
            if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and isinstance(source, str):
                result.failures.setdefault(source, []).append((float(t), str(rec.get("error", ""))))
            continue
        try:
            scrape = _scrape(rec)
        except ValueError as exc:
            damage.found(path, line_no, f"not a scrape record ({exc})")
            continue
        result.by_source.setdefault(scrape.source, []).append(scrape)
    for scrapes in result.by_source.values():
        scrapes.sort(key=lambda s: s.t)
    return result


def scrape_of(rec: dict) -> Scrape | None:
    """One line of `samples.jsonl` being written (the live view) as a Scrape; None for a failed
    scrape or a line that is no scrape record (the final analysis names those)."""
    if not rec.get("ok", True):
        return None
    try:
        return _scrape(rec)
    except ValueError:
        return None


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
