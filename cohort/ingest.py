"""Load one delivery into the warehouse: raw (as delivered) -> staging (typed, harmonized) + quarantine.

A delivery loads atomically (one transaction: a failure or a killed process leaves the warehouse
as it was), is idempotent (the same manifest again changes nothing) and a delivery that breaks the
contract at file level is rejected whole — or held, when it seems to hold direct identifiers — and
recorded in `meta.deliveries` with its reason. Row-level problems never fail a delivery: each
record ends in staging, in quarantine (with the rule it broke) or in the exact-duplicate count.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from cohort import privacy
from cohort.dictionary import apply_column_docs
from cohort.contract import REQUIRED_COLUMNS, TABLE_COLUMNS, TABLES, DeliveryFile, DeliveryRejected, Manifest, read_manifest
from cohort.settings import SQL_DIR
from cohort.sql import run_sql, set_variables, sql_text

# Staging order matters: the other tables check their patient_key against staged patients.
STAGING_ORDER = ("patients", "medications", "labs", "dxa", "diagnoses")


class DeliveryHeld(DeliveryRejected):
    """The delivery seems to hold direct identifiers: nothing is kept, the findings name no value."""

    status = "held"


@dataclass
class IngestOutcome:
    delivery_id: str
    status: str  # loaded | unchanged | rejected | held
    reason: str | None = None
    data_cutoff: str | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> raw/staging/quarantined/duplicates
    quarantine_reasons: list[tuple[str, str, str, int]] = field(default_factory=list)  # table, rule, column, rows
    extra_columns: dict[str, list[str]] = field(default_factory=dict)  # table -> delivered columns outside the contract
    step_seconds: dict[str, float] = field(default_factory=dict)  # step of this load -> seconds (empty unless loaded now)


def prepare_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    """Create the warehouse schemas and (re)load the reference code lists."""
    con.execute(sql_text("warehouse/schema"))
    run_sql(con, "warehouse/reference", reference_dir=SQL_DIR / "reference")
    apply_column_docs(con)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _duckdb_reason(error: Exception) -> str:
    """DuckDB's message reduced to its line number and reason: the offending line's content (which
    may hold identifiers), the reader options and the suggestions are dropped."""
    text = str(error)
    line = re.search(r"CSV Error on Line: (\d+)", text)
    keep = [
        part.strip() for part in text.splitlines()[1:]
        if part.strip() and not re.match(r"(Original Line|Possible|\*|file =|\w+ = |LINE \d|\^)", part.strip())
    ]
    reason = keep[0] if keep else text.splitlines()[0]
    reason = re.sub(r"(?i)(original line|value)\s*:.*", "", reason).strip()
    return f"line {line.group(1)}: {reason}" if line else reason


def _csv_header(delivery_id: str, file: DeliveryFile) -> list[str]:
    """The header record, read on its own so that a bad byte further down is reported by DuckDB
    with its line number rather than here."""
    opener = gzip.open if file.format == ".csv.gz" else open
    try:
        with opener(file.path, "rb") as handle:
            text = handle.readline()
            while text.count(b'"') % 2 and (more := handle.readline()):  # a quoted newline in the header
                text += more
        header = next(csv.reader([text.decode("utf-8-sig")]), None)
    except UnicodeDecodeError:
        raise DeliveryRejected(delivery_id, f"{file.path.name} header is not UTF-8 text", file.path.name)
    except (OSError, EOFError, zlib.error, csv.Error):
        what = "is not a valid gzip file" if file.format == ".csv.gz" else "header could not be read as CSV"
        raise DeliveryRejected(delivery_id, f"{file.path.name} {what}", file.path.name)
    if not header:
        raise DeliveryRejected(delivery_id, f"{file.path.name} is empty: a header row is required", file.path.name)
    return header


def _embedded_newlines(delivery_id: str, file: DeliveryFile) -> bool:
    """Whether some quoted field holds a line break, so record n may not start on line n + 1
    (counting bytes is far cheaper than tracking lines in a CSV parser)."""
    opener = gzip.open if file.format == ".csv.gz" else open
    try:
        with opener(file.path, "rb") as handle:
            newlines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 22), b""))
    except (EOFError, zlib.error, OSError):
        raise DeliveryRejected(delivery_id, f"{file.path.name} could not be read: the gzip stream is corrupt or ends early", file.path.name)
    return newlines > file.expected_rows + 1


def _reader(file: DeliveryFile, header: list[str]) -> str:
    if file.format == ".parquet":
        return "read_parquet($path, file_row_number = true)"
    # RFC 4180 exactly as the contract says, no dialect sniffing; types are decided in staging.
    columns = "{" + ", ".join(f"{_literal(h)}: 'VARCHAR'" for h in header) + "}"
    return (
        f"read_csv($path, auto_detect = false, header = true, columns = {columns}, delim = ',', quote = '\"', "
        "escape = '\"', strict_mode = true)"
    )


def _load_raw_table(con: duckdb.DuckDBPyConnection, delivery_id: str, file: DeliveryFile) -> list[str]:
    """Copy one file into raw.<table> as text; returns the delivered columns outside the contract."""
    table, name = file.table, file.path.name
    if file.format == ".parquet":
        try:
            header = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet($path)", {"path": str(file.path)}).fetchall()]
        except duckdb.Error as error:
            raise DeliveryRejected(delivery_id, f"{name} could not be read as Parquet: {_duckdb_reason(error)}", name)
    else:
        header = _csv_header(delivery_id, file)
    by_name = {h.strip().lower(): h for h in header}
    if len(by_name) != len(header):
        raise DeliveryRejected(delivery_id, f"{name} has duplicate column names in its header", name)
    if missing := [c for c in REQUIRED_COLUMNS[table] if c not in by_name]:
        hint = " (is it comma-separated?)" if len(header) == 1 and re.search(r"[;\t|]", header[0]) else ""
        raise DeliveryRejected(delivery_id, f"{name} lacks required column(s): {', '.join(missing)}{hint}", name)

    def text(column: str) -> str:
        return f"NULLIF(CAST({_quote(by_name[column])} AS VARCHAR), '')" if column in by_name else "NULL"

    extras = [h for key, h in by_name.items() if key not in TABLE_COLUMNS[table]]
    extra_json = (
        "json_object(" + ", ".join(f"{_literal(e)}, CAST({_quote(e)} AS VARCHAR)" for e in extras) + ")"
        if extras else "NULL::JSON"
    )
    select = ", ".join(text(c) for c in TABLE_COLUMNS[table])
    params = {"delivery": delivery_id, "file": name, "path": str(file.path)}
    if file.format == ".parquet":
        record, line = "file_row_number + 1", "NULL"
    else:
        # Numbered after the load: a window such as row_number() OVER () in the load itself would
        # serialize the parallel CSV reader (2x slower at 1M patients). The reader appends records in
        # file order (preserve_insertion_order), so a record's number is its append position. For
        # now source_line holds the line breaks inside the record's quoted fields (0 for nearly all).
        breaks = " + ".join(f"coalesce(length({_quote(h)}) - length(replace({_quote(h)}, chr(10), '')), 0)" for h in header)
        embedded_newlines = _embedded_newlines(delivery_id, file)
        record, line = "NULL", breaks if embedded_newlines else "0"
    try:
        con.execute(
            f"INSERT INTO raw.{table} SELECT $delivery, $file, {record}, {line}, {select}, {extra_json} "
            f"FROM {_reader(file, header)}",
            params,
        )
    except duckdb.Error as error:
        reason = _duckdb_reason(error).replace(str(file.path), name)
        raise DeliveryRejected(delivery_id, f"{name} could not be read: {reason}", name)
    if file.format != ".parquet":
        header_lines = 1 + sum(h.count("\n") for h in header)
        set_variables(con, delivery_id=delivery_id, header_lines=header_lines)
        if embedded_newlines:
            con.execute(sql_text("staging/count_quoted_line_breaks", table=table))
        con.execute(sql_text("staging/number_raw_records", table=table))
    loaded = con.execute(f"SELECT count(*) FROM raw.{table} WHERE delivery_id = ?", [delivery_id]).fetchone()[0]
    if loaded != file.expected_rows:
        raise DeliveryRejected(delivery_id, f"{name} holds {loaded} records but the manifest says {file.expected_rows}", name)
    return extras


def _record_delivery(con: duckdb.DuckDBPyConnection, manifest: Manifest | None, delivery_id: str, status: str, reason: str | None) -> None:
    files = {f.path.name: {"rows": f.expected_rows, "sha256": f.sha256} for f in manifest.files.values()} if manifest else None
    con.execute(
        "INSERT OR REPLACE INTO meta.deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        [
            delivery_id,
            manifest.source_site if manifest else None,
            manifest.extracted_at if manifest else None,
            manifest.data_cutoff if manifest else None,
            status,
            reason,
            manifest.manifest_sha256 if manifest else None,
            json.dumps(files) if files else None,
            datetime.now(timezone.utc),
        ],
    )


def _log_event(con: duckdb.DuckDBPyConnection, delivery_id: str, event: str, manifest: Manifest | None, detail: str | None) -> None:
    con.execute(
        "INSERT INTO meta.delivery_events VALUES (?, ?, ?, ?, ?)",
        [delivery_id, event, manifest.manifest_sha256 if manifest else None, detail, datetime.now(timezone.utc)],
    )


def _delete_delivery(con: duckdb.DuckDBPyConnection, delivery_id: str) -> None:
    for table in TABLES:
        con.execute(f"DELETE FROM raw.{table} WHERE delivery_id = ?", [delivery_id])
        con.execute(f"DELETE FROM staging.{table} WHERE delivery_id = ?", [delivery_id])
    for table in ("staging.fractures", "quarantine.rows", "meta.ingest_counts", "meta.extra_columns"):
        con.execute(f"DELETE FROM {table} WHERE delivery_id = ?", [delivery_id])


def delivery_summary(con: duckdb.DuckDBPyConnection, delivery_id: str) -> IngestOutcome:
    """What the warehouse holds for a delivery: its status, row counts per layer and quarantine reasons."""
    row = con.execute(
        "SELECT status, reason, data_cutoff FROM meta.deliveries WHERE delivery_id = ?", [delivery_id]
    ).fetchone()
    if row is None:
        raise KeyError(f"delivery {delivery_id!r} has not been ingested")
    outcome = IngestOutcome(delivery_id, row[0], row[1], str(row[2]) if row[2] else None)
    for table, raw, staged, quarantined, duplicates in con.execute(
        "SELECT table_name, raw_rows, staging_rows, quarantined_rows, duplicate_rows FROM meta.ingest_counts "
        "WHERE delivery_id = ? ORDER BY table_name", [delivery_id]
    ).fetchall():
        outcome.counts[table] = {"raw": raw, "staging": staged, "quarantined": quarantined, "duplicates": duplicates}
    outcome.quarantine_reasons = con.execute(
        "SELECT table_name, rule, column_name, count(*) FROM quarantine.rows WHERE delivery_id = ? "
        "GROUP BY ALL ORDER BY 4 DESC, 1, 2, 3", [delivery_id]
    ).fetchall()
    for table, column in con.execute(
        "SELECT table_name, column_name FROM meta.extra_columns WHERE delivery_id = ? ORDER BY ALL", [delivery_id]
    ).fetchall():
        outcome.extra_columns.setdefault(table, []).append(column)
    return outcome


class StepTimer:
    """Times the named steps of a load and reports each as it ends (a 1M-patient load takes minutes)."""

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self.report = report
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[step] = elapsed = time.perf_counter() - started
        if self.report:
            self.report(f"{step}: {elapsed:.1f} s")


def ingest_delivery(con: duckdb.DuckDBPyConnection, folder: Path, progress: Callable[[str], None] | None = None) -> IngestOutcome:
    """Load the delivery in `folder` (idempotent, atomic). Rejections are recorded, then raised.
    `progress` receives one line per finished step (e.g. `context.log.info`); the outcome's
    `step_seconds` holds the same timings."""
    step = StepTimer(progress)
    prepare_warehouse(con)
    delivery_id = folder.name
    try:
        manifest = read_manifest(folder)
    except DeliveryRejected as rejection:
        _record_rejection(con, None, rejection)
        raise

    previous = con.execute(
        "SELECT status, manifest_sha256 FROM meta.deliveries WHERE delivery_id = ?", [delivery_id]
    ).fetchone()
    if previous == ("loaded", manifest.manifest_sha256):
        _log_event(con, delivery_id, "unchanged", manifest, "same manifest as the loaded delivery: nothing to do")
        outcome = delivery_summary(con, delivery_id)
        outcome.status = "unchanged"
        return outcome

    # Record numbers are append positions (sql/staging/number_raw_records.sql): file order must hold.
    con.execute("SET preserve_insertion_order = true")
    con.execute("BEGIN TRANSACTION")
    try:
        # A corrected re-delivery (same id, new manifest) replaces its predecessor's rows wholesale.
        _delete_delivery(con, delivery_id)
        findings: list[privacy.Finding] = []
        for table in TABLES:
            file = manifest.files[table]
            with step(f"raw.{table} from {file.path.name}"):
                extras = _load_raw_table(con, delivery_id, file)
            if extras:
                con.executemany("INSERT INTO meta.extra_columns VALUES (?, ?, ?)", [[delivery_id, table, e] for e in extras])
            with step(f"identifier scan of {file.path.name}"):
                findings += privacy.scan(con, delivery_id, table, file.path.name, extras)
        if findings:
            raise DeliveryHeld(delivery_id, "possible direct identifiers: " + "; ".join(f.describe() for f in findings))
        set_variables(con, delivery_id=delivery_id, source_site=manifest.source_site, data_cutoff=manifest.data_cutoff)
        con.execute(sql_text("staging/distinct_records"))
        for table in STAGING_ORDER:
            with step(f"staging.{table} + quarantine"):
                con.execute(sql_text(f"staging/{table}"))
                con.execute(sql_text("staging/route_typed_rows", table=table))
        with step("staging.fractures"):
            con.execute(sql_text("staging/fractures"))
        replaced = previous is not None and previous[0] == "loaded"
        _record_delivery(con, manifest, delivery_id, "loaded", None)
        _log_event(con, delivery_id, "replaced" if replaced else "loaded", manifest,
                   "corrected re-delivery replaced the earlier load" if replaced else None)
        with step("commit"):
            con.execute("COMMIT")
    except BaseException as error:
        con.execute("ROLLBACK")
        if isinstance(error, DeliveryRejected):
            _record_rejection(con, manifest, error)
        raise
    outcome = delivery_summary(con, delivery_id)
    outcome.step_seconds = step.seconds
    return outcome


def _record_rejection(con: duckdb.DuckDBPyConnection, manifest: Manifest | None, rejection: DeliveryRejected) -> None:
    status = getattr(rejection, "status", "rejected")
    _log_event(con, rejection.delivery, status, manifest, rejection.reason)
    # A rejected re-delivery must not erase the record of a delivery that is loaded and in use.
    current = con.execute("SELECT status FROM meta.deliveries WHERE delivery_id = ?", [rejection.delivery]).fetchone()
    if current != ("loaded",):
        _record_delivery(con, manifest, rejection.delivery, status, rejection.reason)
