"""The code location as a whole: loads, and every asset and check is described and pooled."""

import dagster as dg

from pipelines.definitions import defs

STAGES = {"ingest", "validation", "cohort", "models", "reports"}


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_every_asset_has_group_kinds_owner_description_and_duckdb_pool():
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert len(keys) >= 13
    groups = set()
    for key in keys:
        node = graph.get(key)
        groups.add(node.group_name)
        assert node.group_name in STAGES, key
        assert node.kinds, key
        assert node.owners, key
        assert node.description and len(node.description) > 40, key
    assert groups == STAGES
    for assets_def in defs.assets:
        assert assets_def.op.pool == "duckdb", assets_def.keys


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
