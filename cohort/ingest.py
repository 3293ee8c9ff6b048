"""Load one delivery into the warehouse: raw (as delivered) -> staging (typed, harmonized) + quarantine.

A delivery loads atomically (one transaction), is idempotent (same manifest: nothing changes),
and a delivery that breaks the contract at file level is rejected whole and recorded in
`meta.deliveries` with its reason. Row-level problems never fail a delivery: each record ends
in staging, in quarantine (with the rule it broke) or in the exact-duplicate count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from cohort.contract import REQUIRED_COLUMNS, TABLE_COLUMNS, TABLES, DeliveryFile, DeliveryRejected, Manifest, read_manifest
from cohort.settings import SQL_DIR
from cohort.sql import run_sql, set_variables, sql_text

# Staging order matters: the other tables check their patient_key against staged patients.
STAGING_ORDER = ("patients", "medications", "labs", "dxa", "diagnoses")


@dataclass
class IngestOutcome:
    delivery_id: str
    status: str  # loaded | unchanged | rejected
    reason: str | None = None
    data_cutoff: str | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> raw/staging/quarantined/duplicate
    quarantine_reasons: list[tuple[str, str, str, int]] = field(default_factory=list)  # table, rule, column, rows


def prepare_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    """Create the warehouse schemas and (re)load the reference code lists."""
    con.execute(sql_text("warehouse/schema"))
    run_sql(con, "warehouse/reference", reference_dir=SQL_DIR / "reference")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _reader(file: DeliveryFile) -> str:
    if file.format == ".parquet":
        return "read_parquet($path, file_row_number = true)"
    # RFC 4180 as the contract says; types are decided later, so everything is read as text.
    return "read_csv($path, header = true, all_varchar = true, delim = ',', quote = '\"', escape = '\"')"


def _first_line(error: Exception) -> str:
    """DuckDB's message without the offending line's content, which may hold identifiers."""
    message = str(error).splitlines()[0] if str(error) else error.__class__.__name__
    return re.sub(r"(?i)(original line|value)\s*:.*", "", message).strip()


def _load_raw_table(con: duckdb.DuckDBPyConnection, delivery_id: str, file: DeliveryFile) -> None:
    table = file.table
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {_reader(file)}", {"path": str(file.path)}).fetchall()
    except duckdb.Error as error:
        raise DeliveryRejected(delivery_id, f"{file.path.name} could not be read: {_first_line(error)}", file.path.name)
    delivered = [row[0] for row in described if row[0] != "file_row_number"]
    by_name = {name.strip().lower(): name for name in delivered}
    if missing := [c for c in REQUIRED_COLUMNS[table] if c not in by_name]:
        raise DeliveryRejected(delivery_id, f"{file.path.name} lacks required column(s): {', '.join(missing)}", file.path.name)

    def text(column: str) -> str:
        return f"NULLIF(CAST({_quote(by_name[column])} AS VARCHAR), '')" if column in by_name else "NULL"

    extras = [name for key, name in by_name.items() if key not in TABLE_COLUMNS[table]]
    extra_json = (
        "json_object(" + ", ".join(f"'{e.replace(chr(39), chr(39) * 2)}', CAST({_quote(e)} AS VARCHAR)" for e in extras) + ")"
        if extras else "NULL::JSON"
    )
    record = "file_row_number + 1" if file.format == ".parquet" else "row_number() OVER ()"
    select = ", ".join(text(c) for c in TABLE_COLUMNS[table])
    try:
        con.execute(
            f"INSERT INTO raw.{table} SELECT $delivery, $file, {record}, {select}, {extra_json} FROM {_reader(file)}",
            {"delivery": delivery_id, "file": file.path.name, "path": str(file.path)},
        )
    except duckdb.Error as error:
        raise DeliveryRejected(delivery_id, f"{file.path.name} could not be read: {_first_line(error)}", file.path.name)
    loaded = con.execute(f"SELECT count(*) FROM raw.{table} WHERE delivery_id = ?", [delivery_id]).fetchone()[0]
    if loaded != file.expected_rows:
        raise DeliveryRejected(
            delivery_id, f"{file.path.name} holds {loaded} records but the manifest says {file.expected_rows}", file.path.name
        )


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


def _delete_delivery(con: duckdb.DuckDBPyConnection, delivery_id: str) -> None:
    for table in TABLES:
        con.execute(f"DELETE FROM raw.{table} WHERE delivery_id = ?", [delivery_id])
        con.execute(f"DELETE FROM staging.{table} WHERE delivery_id = ?", [delivery_id])
    for table in ("staging.fractures", "quarantine.rows", "meta.ingest_counts"):
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
    return outcome


def ingest_delivery(con: duckdb.DuckDBPyConnection, folder: Path) -> IngestOutcome:
    """Load the delivery in `folder` (idempotent, atomic). Rejections are recorded, then raised."""
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
        outcome = delivery_summary(con, delivery_id)
        outcome.status = "unchanged"
        return outcome

    con.execute("BEGIN TRANSACTION")
    try:
        # A corrected re-delivery (same id, new manifest) replaces its predecessor's rows wholesale.
        _delete_delivery(con, delivery_id)
        for table in TABLES:
            _load_raw_table(con, delivery_id, manifest.files[table])
        set_variables(con, delivery_id=delivery_id, source_site=manifest.source_site, data_cutoff=manifest.data_cutoff)
        for table in STAGING_ORDER:
            con.execute(sql_text(f"staging/{table}"))
            con.execute(sql_text("staging/route_typed_rows", table=table))
        con.execute(sql_text("staging/fractures"))
        _record_delivery(con, manifest, delivery_id, "loaded", None)
        con.execute("COMMIT")
    except BaseException as error:
        con.execute("ROLLBACK")
        if isinstance(error, DeliveryRejected):
            _record_rejection(con, manifest, error)
        raise
    return delivery_summary(con, delivery_id)


def _record_rejection(con: duckdb.DuckDBPyConnection, manifest: Manifest | None, rejection: DeliveryRejected) -> None:
    # A rejected re-delivery must not erase the record of a delivery that is loaded and in use.
    status = con.execute("SELECT status FROM meta.deliveries WHERE delivery_id = ?", [rejection.delivery]).fetchone()
    if status != ("loaded",):
        _record_delivery(con, manifest, rejection.delivery, "rejected", rejection.reason)
