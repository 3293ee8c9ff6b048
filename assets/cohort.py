"""Cohort stage: the study cohort and its analysis datasets as they stood at each quarter's data
cutoff, built in SQL (sql/cohort/*.sql, one file per transformation) under the protocol in
sql/cohort/protocol.toml."""

import dagster as dg

from cohort.dictionary import apply_column_docs
from cohort.display import markdown_image, markdown_table
from cohort.sql import run_sql, sql_text
from pipelines.metadata import (
    attrition_flow,
    cohort_ledger,
    column_schema,
    preview,
    row_count,
    sql_description,
    table_count_ledger,
    table_metadata,
)
from pipelines.partitions import quarter_cutoff, quarter_partitions
from pipelines.resources import StudyProtocol, Warehouse

ALL_DELIVERIES = dg.AllPartitionMapping()
COHORT_KW = dict(group_name="cohort", kinds={"duckdb", "sql"}, owners=["team:epidemiology"])


def _staging(table: str) -> dg.AssetDep:
    return dg.AssetDep(["staging", table], partition_mapping=ALL_DELIVERIES)


def _build(
    context: dg.AssetExecutionContext, warehouse: Warehouse, protocol: StudyProtocol, sql_name: str, table: str
) -> tuple[dict, int, int, int]:
    """Run one cohort SQL file for the partition's data cutoff; returns the metadata describing the
    table it filled (without counts), its rows and patients at the cutoff, and the small-cell threshold."""
    cutoff = quarter_cutoff(context.partition_key)
    settings = protocol.load()
    with warehouse.get_connection() as con:
        con.execute(sql_text("cohort/schema"))
        run_sql(con, f"cohort/{sql_name}", data_cutoff=cutoff, **settings.sql_variables())
        apply_column_docs(con)
        rows, patients = con.execute(
            f"SELECT count(*), count(DISTINCT (source_site, patient_key)) FROM {table} WHERE data_cutoff = ?", [cutoff]
        ).fetchone()
        metadata = {
            "data_cutoff": str(cutoff),
            "dagster/column_schema": column_schema(con, table),
            "preview": preview(con, table, "data_cutoff = ?", [cutoff]),
        }
    return metadata, rows, patients, settings.reporting.small_cell_threshold


def cohort_table_asset(key: list[str], sql_name: str, deps: list, description: str) -> dg.AssetsDefinition:
    table = ".".join(key)

    @dg.asset(
        key=key,
        **COHORT_KW,
        partitions_def=quarter_partitions,
        deps=deps,
        pool="duckdb",
        metadata=table_metadata(table),
        description=sql_description(description, table, f"cohort/{sql_name}"),
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse, protocol: StudyProtocol) -> dg.MaterializeResult:
        metadata, rows, patients, threshold = _build(context, warehouse, protocol, sql_name, table)
        ledger = table_count_ledger(rows, patients, threshold)
        return dg.MaterializeResult(
            metadata={**row_count(ledger.get("rows")), "patients": ledger.text("patients"), **metadata}
        )

    return _asset


ai_episodes = cohort_table_asset(
    ["cohort", "ai_episodes"], "ai_episodes", [_staging("medications")],
    "Aromatase-inhibitor treatment episodes (anastrozole, letrozole, exemestane): dispensings joined across gaps "
    "up to the protocol's grace period, with drug and mean dose.",
)
estradiol_results = cohort_table_asset(
    ["cohort", "estradiol_results"], "estradiol_results", [_staging("labs")],
    "Estradiol tier (<10, 10-<20, 20-<40, >=40 pg/mL or unknown) per patient and collection day, censored "
    "results placed in a tier only when the limit allows it; all assays and LC-MS/MS only.",
)
exposure_segments = cohort_table_asset(
    ["cohort", "exposure_segments"], "exposure_segments",
    [["cohort", "members"], ["cohort", "ai_episodes"], ["cohort", "estradiol_results"], _staging("medications")],
    "Time-varying exposure of each member: calendar-day segments of constant current AI, estradiol tier and "
    "glucocorticoid use, from baseline to the end of follow-up.",
)
fracture_intervals = cohort_table_asset(
    ["analysis", "fracture_intervals"], "fracture_intervals", [["cohort", "exposure_segments"]],
    "Counting-process rows (start, stop] in days since index for the time-varying fracture models, split at every "
    "change of current AI, estradiol tier and glucocorticoid use, with the event (fracture, death or censored).",
)
bmd_long = cohort_table_asset(
    ["analysis", "bmd_long"], "bmd_long", [["cohort", "exposure_segments"], _staging("dxa")],
    "BMD analysis dataset: one row per member, skeletal site and standardized scan, with log sBMD, years since "
    "baseline and the years spent on AI and in each estradiol tier, for the mixed-effects models.",
)


@dg.multi_asset(
    name="cohort_members",
    specs=[
        dg.AssetSpec(
            ["cohort", "members"],
            **COHORT_KW,
            deps=[["cohort", "ai_episodes"], ["cohort", "estradiol_results"],
                  *(_staging(t) for t in ("patients", "medications", "labs", "dxa", "fractures"))],
            metadata=table_metadata("cohort.members"),
            description=sql_description(
                "The study cohort: men who are new users of testosterone therapy, with index date, baseline covariates "
                "(age, BMI, vitamin D, testosterone, estradiol and its tier, baseline sBMD per site, scanner) and "
                "follow-up to fracture, death, bone-active drug, end of enrollment or data cutoff.",
                "cohort.members", "cohort/members",
            ),
        ),
        dg.AssetSpec(
            ["cohort", "attrition"],
            **COHORT_KW,
            deps=[["cohort", "ai_episodes"]],
            metadata=table_metadata("cohort.attrition"),
            description=sql_description(
                "The cohort flow: patients remaining and excluded at each protocol step, in order (the report's flow "
                "diagram), small counts suppressed with complementary suppression.",
                "cohort.attrition", "cohort/members",
            ),
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def cohort_members(context: dg.AssetExecutionContext, warehouse: Warehouse, protocol: StudyProtocol):
    """Build the cohort and its attrition for the quarter's data cutoff."""
    members, rows, patients, threshold = _build(context, warehouse, protocol, "members", "cohort.members")
    cutoff = quarter_cutoff(context.partition_key)
    with warehouse.get_connection() as con:
        attrition = con.execute(
            "SELECT step, description, patients_remaining, patients_excluded FROM cohort.attrition "
            "WHERE data_cutoff = ? ORDER BY step_order", [cutoff]
        ).fetchall()
        in_bmd, ai_ever = con.execute(
            "SELECT count(*) FILTER (in_bmd_analysis), count(*) FILTER (ai_ever) FROM cohort.members WHERE data_cutoff = ?",
            [cutoff],
        ).fetchone()
    steps = [(step, remaining, excluded) for step, _, remaining, excluded in attrition]
    ledger, cohort_step = cohort_ledger(steps, rows, patients, in_bmd, ai_ever, threshold)
    yield dg.MaterializeResult(
        asset_key=["cohort", "members"],
        metadata={
            **row_count(ledger.get("rows")),
            "patients": ledger.text(("n", "all")),
            **members,
            "in_bmd_analysis": ledger.text("in_bmd_analysis"),
            "ai_ever": ledger.text(("n", "AI during follow-up")),
        },
    )
    flow = attrition_flow(ledger, [(step, description) for step, description, *_ in attrition], cohort_step)
    yield dg.MaterializeResult(
        asset_key=["cohort", "attrition"],
        # The row count is the number of protocol steps, not of patients: nothing to suppress.
        metadata={
            "dagster/row_count": len(attrition),
            "data_cutoff": str(cutoff),
            "attrition": dg.MetadataValue.md(_flow_table(flow)),
            "attrition_plot": _flow_plot(flow),
        },
    )


def _flow_table(flow: list[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame(flow).drop(columns="cohort")
    return markdown_table(frame.rename(columns={"remaining": "patients_remaining", "excluded": "patients_excluded"}), max_rows=50)


def _flow_plot(flow: list[dict]) -> dg.MetadataValue:
    """The flow diagram of the report (cohort.figures.flow_figure), with the same suppressed texts."""
    if not flow:
        return dg.MetadataValue.md("No attrition rows for this data cutoff.")
    from cohort.figures import flow_figure

    return dg.MetadataValue.md(markdown_image(flow_figure(flow), "cohort flow"))
