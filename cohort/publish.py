"""Publish a read-only copy of the warehouse for statisticians.

DuckDB lets one process write a file and then no other process can even read it, so readers never
open the working warehouse while the pipeline may run: after each quarter's build they open
`<published dir>/current.duckdb` (or `<YYYY-Qn>.duckdb` for a past quarter), a separate file
swapped in atomically (os.replace), so a reader sees the old or the new copy, never half of one.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import duckdb

from cohort.dictionary import apply_column_docs

# What a published copy holds, per schema: tables with a data_cutoff keep the quarters up to the
# cutoff; staging keeps the deliveries current at the cutoff; meta and reference are kept whole.
PUBLISHED_SCHEMAS = ("meta", "reference", "staging", "cohort", "analysis", "results")
CURRENT = "current.duckdb"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _row_filter(columns: set[str]) -> str:
    if "data_cutoff" in columns and "delivery_id" not in columns:
        return "WHERE data_cutoff <= $cutoff"
    if "delivery_id" in columns:
        return "WHERE delivery_id IN (SELECT delivery_id FROM meta.deliveries_as_of($cutoff))"
    return ""


def publish(warehouse: Path, published_dir: Path, label: str, cutoff: date) -> Path:
    """Write `<published_dir>/<label>.duckdb` for `cutoff`; make it `current.duckdb` if it is the newest."""
    published_dir.mkdir(parents=True, exist_ok=True)
    target = published_dir / f"{label}.duckdb"
    partial = published_dir / f"published.partial-{os.getpid()}"
    partial.unlink(missing_ok=True)
    with duckdb.connect(str(partial)) as con:
        # Read through the warehouse as the default catalog, so its macros resolve there.
        con.execute(f"ATTACH {_literal(str(warehouse))} AS warehouse (READ_ONLY)")
        published = _quote(con.execute("SELECT current_database()").fetchone()[0])
        con.execute("USE warehouse")
        tables = con.execute(
            "SELECT schema_name, table_name, comment FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name IN (SELECT unnest($schemas)) ORDER BY ALL", {"schemas": list(PUBLISHED_SCHEMAS)}
        ).fetchall()
        for schema in sorted({s for s, _, _ in tables}):
            con.execute(f"CREATE SCHEMA {published}.{_quote(schema)}")
        for schema, table, comment in tables:
            columns = con.execute(
                "SELECT column_name, comment FROM duckdb_columns() WHERE database_name = current_database() "
                "AND schema_name = ? AND table_name = ? ORDER BY column_index", [schema, table]
            ).fetchall()
            name = f"{_quote(schema)}.{_quote(table)}"
            where = _row_filter({c for c, _ in columns})
            con.execute(f"CREATE TABLE {published}.{name} AS SELECT * FROM {name} {where}", {"cutoff": cutoff} if where else {})
            if comment:
                con.execute(f"COMMENT ON TABLE {published}.{name} IS {_literal(comment)}")
            for column, column_comment in columns:
                if column_comment:
                    con.execute(f"COMMENT ON COLUMN {published}.{name}.{_quote(column)} IS {_literal(column_comment)}")
        con.execute(
            f"CREATE TABLE {published}.meta.publication AS SELECT $label AS label, $cutoff AS data_cutoff, now() AS published_at",
            {"label": label, "cutoff": cutoff},
        )
        con.execute(f"COMMENT ON TABLE {published}.meta.publication IS 'Which quarter this published copy holds and when it was written.'")
        con.execute(f"USE {published}")
        con.execute("DETACH warehouse")
        apply_column_docs(con)  # results tables are created by the models, after ingest applied the docs
    os.replace(partial, target)
    newest = max(p.stem for p in published_dir.glob("*.duckdb") if p.name != CURRENT)
    if newest == label:
        staging = published_dir / f".{CURRENT}.{os.getpid()}.partial"
        staging.write_bytes(target.read_bytes())
        os.replace(staging, published_dir / CURRENT)
    return target
