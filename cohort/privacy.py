"""The direct-identifier scan run on every delivery before anything from it is kept.

A delivery holding anything that looks like a direct identifier (SSN, email, phone number,
street address, an MRN or name label, or a column named like one) is held: the report names the
file, column, kind and number of rows — never the value.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

import duckdb

from cohort.contract import TABLE_COLUMNS
from cohort.settings import SQL_DIR

# Column names that hold direct identifiers (compared after lower-casing and removing _ - and spaces).
IDENTIFIER_COLUMN = re.compile(
    r"^(patient|pt|first|last|full|given|family|middle)?(name|names)$|ssn|socialsecurity|e?mail|phone|telephone|mobile|"
    r"fax|address|street|zip(code)?|postalcode|mrn|medicalrecord|dateofbirth|dob|birthdate|driverslicen[cs]e|passport"
)


@dataclass(frozen=True)
class Finding:
    file: str
    column: str
    kind: str
    rows: int

    def describe(self) -> str:
        what = "is named like a direct identifier" if self.kind == "identifier_column" else f"looks like {self.kind.replace('_', ' ')}"
        return f"{self.file} column {self.column!r}: {self.rows} row(s) {what}"


def identifier_patterns() -> dict[str, str]:
    with (SQL_DIR / "reference" / "identifier_patterns.csv").open(newline="") as handle:
        return {row["kind"]: row["pattern"] for row in csv.DictReader(handle)}


def identifier_like(column: str) -> bool:
    return bool(IDENTIFIER_COLUMN.search(re.sub(r"[\s_\-]", "", column.lower())))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def scan(con: duckdb.DuckDBPyConnection, delivery_id: str, table: str, file: str, extra_columns: list[str]) -> list[Finding]:
    """Findings in one raw table of a delivery. One pass over the rows with one combined pattern
    per column; the per-kind breakdown is computed only for columns that matched at all."""
    patterns = identifier_patterns()
    combined = "|".join(f"(?:{p.removeprefix('(?i)')})" if not p.startswith("(?i)") else f"(?i:{p[4:]})" for p in patterns.values())
    columns = {c: f'"{c}"' for c in TABLE_COLUMNS[table]}
    columns.update({e: f"json_extract_string(extra_columns, {_literal('$.' + chr(34) + e + chr(34))})" for e in extra_columns})
    hits = ", ".join(f"count(*) FILTER (regexp_matches({expr}, {_literal(combined)}))" for expr in columns.values())
    present = ", ".join(f"count({expr})" for expr in columns.values())
    counts = con.execute(
        f"SELECT {hits}, {present} FROM raw.{table} WHERE delivery_id = ?", [delivery_id]
    ).fetchone()
    n = len(columns)
    findings = []
    for (name, expr), matched, non_null in zip(columns.items(), counts[:n], counts[n:]):
        if name in extra_columns and identifier_like(name) and non_null:
            findings.append(Finding(file, name, "identifier_column", non_null))
        if matched:
            kinds = ", ".join(f"count(*) FILTER (regexp_matches({expr}, {_literal(p)}))" for p in patterns.values())
            by_kind = con.execute(f"SELECT {kinds} FROM raw.{table} WHERE delivery_id = ?", [delivery_id]).fetchone()
            findings += [Finding(file, name, kind, rows) for kind, rows in zip(patterns, by_kind) if rows]
    return findings
