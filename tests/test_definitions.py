"""The code location as a whole: loads, cheaply, and every asset and check is pooled (what each
asset shows in the UI: tests/test_ui_metadata.py)."""

import subprocess
import sys

import dagster as dg

from cohort.settings import PROJECT_ROOT
from pipelines.definitions import defs

STAGES = {"ingest", "validation", "cohort", "models", "reports"}


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_every_stage_is_a_group_and_every_asset_is_pooled():
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert len(keys) >= 13
    assert {graph.get(key).group_name for key in keys} == STAGES
    for assets_def in defs.assets:
        assert assets_def.op.pool == "duckdb", assets_def.keys


def test_stage_modules_import_no_heavy_library():
    """The code location loads in a few seconds only if pandas, numpy, scipy, matplotlib and Great
    Expectations are imported by the runs that use them, not by the modules that define assets.
    (assets.models and assets.reports, which imports it, are covered by bench/bench_code_location.py.)"""
    heavy = ("pandas", "numpy", "scipy", "matplotlib", "great_expectations", "sqlalchemy")
    code = (
        "import sys; import assets.ingest, assets.validation, assets.cohort, pipelines.metadata, cohort.display, "
        f"cohort.figures; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_checks_are_blocking_and_pooled():
    checks = list(defs.asset_checks)
    specs = [spec for check in checks for spec in check.check_specs]
    assert {spec.asset_key.to_user_string() for spec in specs} >= {
        "staging/patients", "staging/medications", "staging/labs", "staging/dxa", "staging/diagnoses"
    }
    assert all(spec.blocking for spec in specs)
    assert all(check.op.pool == "duckdb" for check in checks)


def test_jobs_schedule_sensor_and_in_process_executor():
    assert {job.name for job in defs.jobs} >= {"ingest_new_deliveries", "rebuild_cohort_and_models", "quarterly_cohort_report"}
    assert defs.get_schedule_def("quarterly_report_schedule").cron_schedule == "0 6 5 1,4,7,10 *"
    assert defs.get_sensor_def("delivery_sensor")
    assert defs.executor.name == "in_process"
