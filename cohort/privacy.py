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
    """Findings in one raw table of a delivery. The combined pattern runs once per distinct value of
    each column (most columns hold few distinct values); rows are counted per kind only for a column
    that matched at all."""
    patterns = identifier_patterns()
    combined = "|".join(f"(?i:{p[4:]})" if p.startswith("(?i)") else f"(?:{p})" for p in patterns.values())
    columns = {c: f'"{c}"' for c in TABLE_COLUMNS[table]}
    columns.update({e: f"json_extract_string(extra_columns, {_literal('$.' + chr(34) + e + chr(34))})" for e in extra_columns})
    source = f"raw.{table} WHERE delivery_id = $delivery"
    probes = " UNION ALL ".join(
        f"SELECT {_literal(name)} AS name, count(*) FILTER (regexp_matches(v, {_literal(combined)})) AS matched, "
        f"count(v) AS present FROM (SELECT DISTINCT {expr} AS v FROM {source})"
        for name, expr in columns.items()
    )
    findings = []
    for name, matched, present in con.execute(probes, {"delivery": delivery_id}).fetchall():
        if name in extra_columns and identifier_like(name) and present:
            rows = con.execute(f"SELECT count({columns[name]}) FROM {source}", {"delivery": delivery_id}).fetchone()[0]
            findings.append(Finding(file, name, "identifier_column", rows))
        if matched:
            kinds = ", ".join(f"count(*) FILTER (regexp_matches({columns[name]}, {_literal(p)}))" for p in patterns.values())
            by_kind = con.execute(f"SELECT {kinds} FROM {source}", {"delivery": delivery_id}).fetchone()
            findings += [Finding(file, name, kind, rows) for kind, rows in zip(patterns, by_kind) if rows]
    return findings
