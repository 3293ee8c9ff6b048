"""Build small deliveries by hand for tests: CSV files written row by row, manifest computed."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from cohort.contract import TABLE_COLUMNS

PATIENT = {
    "patient_key": "PT00000001", "sex_at_birth": "M", "birth_year": "1960", "age_90_plus": "false",
    "race": "White", "ethnicity": "Not Hispanic or Latino", "enrollment_start": "2015-01-01",
    "enrollment_end": "2025-06-30", "death_date": "",
}


def csv_bytes(rows: list[dict], columns: list[str] | None = None, line_end: str = "\n") -> bytes:
    columns = columns or (list(rows[0]) if rows else [])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator=line_end, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_delivery(
    root: Path,
    delivery_id: str = "site_a_2025q2",
    *,
    site: str = "site_a",
    cutoff: str = "2025-06-30",
    extracted_at: str = "2025-07-03T10:00:00Z",
    tables: dict[str, list[dict]] | None = None,
    files: dict[str, bytes] | None = None,
    rows: dict[str, int] | None = None,
) -> Path:
    """A contract-valid delivery folder. `tables` gives rows per table (missing tables are empty);
    `files` replaces a table's file with given bytes (any name, e.g. `labs.csv.gz`), in which case
    `rows` must give its record count for the manifest."""
    folder = root / delivery_id
    folder.mkdir(parents=True)
    tables = {"patients": [PATIENT], **(tables or {})}
    files = dict(files or {})
    counts = dict(rows or {})
    for table, columns in TABLE_COLUMNS.items():
        if any(name.split(".")[0] == table for name in files):
            continue
        table_rows = tables.get(table, [])
        files[f"{table}.csv"] = csv_bytes(table_rows, list(columns))
        counts[f"{table}.csv"] = len(table_rows)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {
        "contract_version": "1", "delivery_id": delivery_id, "source_site": site, "extracted_at": extracted_at,
        "data_cutoff": cutoff, "deidentification": "date_shifted",
        "files": {name: {"rows": counts[name], "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder
