"""Cohort stage: the study cohort as it stood at each quarter's data cutoff, in SQL (sql/cohort/)."""

import dagster as dg

from cohort.display import markdown_table, suppress_count
from cohort.protocol import load_protocol
from cohort.sql import run_sql, sql_text
from pipelines.partitions import quarter_cutoff, quarter_partitions
from pipelines.resources import Warehouse

ALL_DELIVERIES = dg.AllPartitionMapping()


def _staging_dep(table: str) -> dg.AssetDep:
    return dg.AssetDep(["staging", table], partition_mapping=ALL_DELIVERIES)


def _run_cohort_sql(context: dg.AssetExecutionContext, warehouse: Warehouse, name: str):
    cutoff = quarter_cutoff(context.partition_key)
    with warehouse.get_connection() as con:
        con.execute(sql_text("cohort/schema"))
        run_sql(con, f"cohort/{name}", data_cutoff=cutoff, **load_protocol().sql_variables())
    return cutoff


@dg.asset(
    key=["cohort", "ai_episodes"],
    group_name="cohort",
    kinds={"duckdb", "sql"},
    owners=["team:epidemiology"],
    partitions_def=quarter_partitions,
    deps=[_staging_dep("medications")],
    pool="duckdb",
)
def ai_episodes(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Aromatase-inhibitor treatment episodes (anastrozole, letrozole, exemestane): dispensings joined
    across gaps up to the protocol's grace period. Table `cohort.ai_episodes`; SQL `sql/cohort/ai_episodes.sql`."""
    cutoff = _run_cohort_sql(context, warehouse, "ai_episodes")
    with warehouse.get_connection() as con:
        rows, patients = con.execute(
            "SELECT count(*), count(DISTINCT (source_site, patient_key)) FROM cohort.ai_episodes WHERE data_cutoff = ?",
            [cutoff],
        ).fetchone()
    return dg.MaterializeResult(
        metadata={"dagster/row_count": rows, "patients_with_episodes": suppress_count(patients), "data_cutoff": str(cutoff)}
    )


@dg.multi_asset(
    name="cohort_members",
    specs=[
        dg.AssetSpec(
            ["cohort", "members"],
            group_name="cohort",
            kinds={"duckdb", "sql"},
            owners=["team:epidemiology"],
            deps=[["cohort", "ai_episodes"], *(_staging_dep(t) for t in ("patients", "medications", "labs", "dxa", "fractures"))],
            description="The study cohort: men who are new users of testosterone therapy, with index date, baseline "
            "covariates (age, BMI, vitamin D, testosterone, estradiol, baseline sBMD per site, scanner) and follow-up "
            "to fracture, death, bone-active drug, end of enrollment or data cutoff. Table `cohort.members`; "
            "SQL `sql/cohort/members.sql`.",
        ),
        dg.AssetSpec(
            ["cohort", "attrition"],
            group_name="cohort",
            kinds={"duckdb", "sql"},
            owners=["team:epidemiology"],
            deps=[["cohort", "ai_episodes"]],
            description="The cohort flow: patients remaining and excluded at each protocol step, in order (the report's "
            "flow diagram). Table `cohort.attrition`; SQL `sql/cohort/members.sql`.",
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def cohort_members(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Build the cohort and its attrition for the quarter's data cutoff."""
    cutoff = _run_cohort_sql(context, warehouse, "members")
    with warehouse.get_connection() as con:
        attrition = con.execute(
            "SELECT step, description, patients_remaining, patients_excluded FROM cohort.attrition "
            "WHERE data_cutoff = ? ORDER BY step_order", [cutoff]
        ).df()
        members, in_bmd, ai_ever = con.execute(
            "SELECT count(*), count(*) FILTER (in_bmd_analysis), count(*) FILTER (ai_ever) FROM cohort.members WHERE data_cutoff = ?",
            [cutoff],
        ).fetchone()
    shown = attrition.assign(
        patients_remaining=attrition["patients_remaining"].map(suppress_count),
        patients_excluded=attrition["patients_excluded"].map(suppress_count),
    )
    yield dg.MaterializeResult(
        asset_key=["cohort", "members"],
        metadata={
            "dagster/row_count": members,
            "data_cutoff": str(cutoff),
            "patients": suppress_count(members),
            "in_bmd_analysis": suppress_count(in_bmd),
            "ai_ever": suppress_count(ai_ever),
        },
    )
    yield dg.MaterializeResult(
        asset_key=["cohort", "attrition"],
        metadata={"dagster/row_count": len(attrition), "attrition": dg.MetadataValue.md(markdown_table(shown))},
    )
