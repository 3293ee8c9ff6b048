"""The whole pipeline on a delivery written by hand: real DuckDB file, real Dagster runs, real GX."""

import csv
import gzip
import json
import re
import subprocess
import sys
import textwrap

import duckdb

import pytest

from cohort.cli import main
from tests.conftest import PARTNER_DELIVERY, land, latest_metadata, query


def test_every_delivered_record_is_accounted_for(partner_run):
    settings, summary, _, _ = partner_run
    assert summary.deliveries_loaded == [PARTNER_DELIVERY.name]
    manifest = json.loads((PARTNER_DELIVERY / "manifest.json").read_text())
    expected = {name.split(".")[0]: entry["rows"] for name, entry in manifest["files"].items()}
    counts = dict(query(settings, "SELECT table_name, raw_rows FROM meta.ingest_counts"))
    assert counts == expected
    for table, raw, staged, quarantined, duplicates in query(
        settings, "SELECT table_name, raw_rows, staging_rows, quarantined_rows, duplicate_rows FROM meta.ingest_counts"
    ):
        (in_staging,) = query(settings, f"SELECT count(*) FROM staging.{table}")[0]
        assert in_staging == staged
        assert raw == staged + quarantined + duplicates
    # The one non-numeric lab result (HEMOLYZED) is quarantined with its reason and its record
    # number (as Python's csv module counts records), not dropped.
    with gzip.open(PARTNER_DELIVERY / "labs.csv.gz", "rt", newline="") as handle:
        record = next(n for n, row in enumerate(csv.DictReader(handle), start=1) if row["result"] == "HEMOLYZED")
    assert query(settings, "SELECT table_name, rule, column_name, source_record FROM quarantine.rows") == [
        ("labs", "non_numeric_result", "result", record)
    ]


def test_validation_checks_ran_and_passed(partner_run):
    settings, _, instance, _ = partner_run
    rows = query(settings, "SELECT table_name, count(*), count(*) FILTER (passed) FROM meta.dq_results GROUP BY 1 ORDER BY 1")
    assert [r[0] for r in rows] == ["diagnoses", "dxa", "labs", "medications", "patients"]
    assert all(total >= 4 for _, total, _ in rows)
    # Even the warn-level "mostly male" expectation passes: 2 of 40 are not male, within its 10%.
    assert all(total == passed for _, total, passed in rows)
    import dagster as dg

    evaluations = instance.get_records_for_run(
        run_id=instance.get_runs(dg.RunsFilter(job_name="ingest_new_deliveries"))[0].run_id,
        of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    ).records
    results = {r.event_log_entry.dagster_event.event_specific_data.check_name: r.event_log_entry.dagster_event.event_specific_data.passed
               for r in evaluations}
    assert {"row_conservation", "staging_patients_expectations", "staging_labs_expectations"} <= set(results)
    assert all(results.values()), results


def test_cohort_and_report(partner_run):
    settings, summary, _, lines = partner_run
    (members,) = query(settings, "SELECT count(*) FROM cohort.members")[0]
    # 40 patients: 2 not male, 3 prevalent testosterone users (first dispensing 60 days after enrollment).
    assert members == 35
    attrition = query(settings, "SELECT step, patients_remaining, patients_excluded FROM cohort.attrition ORDER BY step_order")
    assert attrition[0] == ("source_population", 40, 0)
    assert attrition[1] == ("sex_at_birth", 38, 2)
    assert ("new_user", 35, 3) in attrition
    (fractures,) = query(settings, "SELECT count(*) FROM cohort.members WHERE follow_up_end_reason = 'fracture'")[0]
    assert fractures == 4  # ER visit + admission + follow-up code = one fracture each
    km = query(settings, "SELECT group_label, min(survival) FROM results.km_curves GROUP BY 1 ORDER BY 1")
    assert [g for g, _ in km] == ["AI during follow-up", "No AI"]
    assert all(0 < s < 1 for _, s in km)

    report = summary.reports["2025-Q2"]
    assert report == settings.reports_dir / "2025-Q2" / "cohort_report.html"
    html = report.read_text()
    assert re.search(r'data-metric="cohort_size">35<', html)
    assert "northside_2025q2" in html and "data:image/png;base64," in html
    # Small cells: 4 fractures are shown as <11, never as the number.
    assert 'data-metric="fractures">&lt;11<' in html
    assert any(line.startswith("[reports] 2025-Q2") for line in lines)
    assert any(line.startswith("[cohort] 2025-Q2") for line in lines)


def test_cli_run_without_deliveries_fails_clearly(workspace, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(workspace.landing_dir.parent / "dagster_home"))
    code = main(["run", "--landing", str(workspace.landing_dir), "--duckdb", str(workspace.duckdb_path),
                 "--reports", str(workspace.reports_dir)])
    assert code == 1
    assert "no deliveries in" in capsys.readouterr().err


def test_cli_run_reports_a_rejected_delivery(workspace, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(workspace.landing_dir.parent / "dagster_home"))
    folder = land(workspace, PARTNER_DELIVERY)
    with (folder / "dxa.csv").open("a") as handle:
        handle.write("NS000001x,2024-01-01,femoral_neck,left,0.8,,,Hologic,\n")
    code = main(["run", "--landing", str(workspace.landing_dir), "--duckdb", str(workspace.duckdb_path),
                 "--reports", str(workspace.reports_dir)])
    assert code == 1
    err = capsys.readouterr().err
    assert "northside_2025q2" in err and "sha256 of dxa.csv does not match the manifest" in err
    assert query(workspace, "SELECT status, reason FROM meta.deliveries") == [
        ("rejected", "sha256 of dxa.csv does not match the manifest")
    ]
    assert query(workspace, "SELECT count(*) FROM staging.patients") == [(0,)]


def test_published_copy_is_readable_while_the_warehouse_is_being_written(partner_run):
    settings, _, _, _ = partner_run
    current = settings.published_dir / "current.duckdb"
    assert (settings.published_dir / "2025-Q2.duckdb").exists() and current.exists()
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(settings.duckdb_path)!r})
            con.execute("CREATE TEMP TABLE write_probe (n INTEGER)")
            print("writing", flush=True)
            for n in range(200):
                con.execute("INSERT INTO write_probe VALUES (?)", [n])
                time.sleep(0.02)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        with pytest.raises(duckdb.IOException):  # the working file is locked by the writer...
            duckdb.connect(str(settings.duckdb_path), read_only=True)
        with duckdb.connect(str(current), read_only=True) as con:  # ...the published copy is not
            assert con.execute("SELECT count(*) FROM cohort.members").fetchone() == (35,)
            assert con.execute("SELECT label, data_cutoff::VARCHAR FROM meta.publication").fetchone() == ("2025-Q2", "2025-06-30")
            assert con.execute("SELECT count(*) FROM staging.patients").fetchone() == (40,)
            comment = con.execute("SELECT comment FROM duckdb_tables() WHERE table_name = 'members'").fetchone()[0]
            assert comment.startswith("Study cohort")
        assert writer.poll() is None, "the writer was still writing while we read"
    finally:
        writer.kill()
        writer.wait()


def test_materializations_show_schema_preview_and_quarantine_plot(partner_run):
    _, _, instance, _ = partner_run

    labs = latest_metadata(instance, "staging", "labs")
    # 1 quarantined record: shown as <11, and the staging count that would give it away (raw - 1) is hidden.
    assert "dagster/row_count" not in labs and labs["row_count"].value == "hidden" and labs["quarantined_rows"].value == "<11"
    assert "result_raw" in [c.name for c in labs["dagster/column_schema"].value.columns]
    assert all(c.description for c in labs["dagster/column_schema"].value.columns)
    assert "| patient_key" in labs["preview"].value or "patient_key" in labs["preview"].value
    quarantine = latest_metadata(instance, "quarantine", "rows")
    assert "data:image/png;base64," in quarantine["quarantine_reasons"].value
    members = latest_metadata(instance, "cohort", "members")
    assert members["patients"].value == "35" and members["dagster/column_schema"].value.columns


def test_data_dictionary_in_the_repo_is_current_and_complete(partner_run):
    from cohort.dictionary import render
    from cohort.settings import PROJECT_ROOT

    settings, _, _, _ = partner_run
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        generated = render(con)
    committed = (PROJECT_ROOT / "docs" / "data_dictionary.md").read_text()
    assert generated == committed, "docs/data_dictionary.md is stale: run `cohort dictionary --duckdb <warehouse>`"
    undocumented = [line for line in generated.splitlines() if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert undocumented == []
    with duckdb.connect(str(settings.published_dir / "current.duckdb"), read_only=True) as con:
        assert con.execute(
            "SELECT count(*) FROM duckdb_columns() WHERE comment IS NULL AND schema_name IN ('cohort', 'analysis', 'results')"
        ).fetchone() == (0,)
