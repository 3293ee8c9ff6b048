"""Models stage: fracture time-to-event estimates for each quarter's cohort, kept in `results.*`."""

import dagster as dg

from cohort.display import figure_png, markdown_table, png_data_uri, suppress_count
from cohort.figures import km_figure
from cohort.fracture import kaplan_meier_by_group
from cohort.sql import sql_text
from pipelines.partitions import quarter_cutoff, quarter_partitions
from pipelines.resources import Warehouse

AI_GROUPS = {True: "AI during follow-up", False: "No AI"}


@dg.asset(
    key=["results", "km_curves"],
    group_name="models",
    kinds={"duckdb", "python"},
    owners=["team:biostatistics"],
    partitions_def=quarter_partitions,
    deps=[["cohort", "members"]],
    pool="duckdb",
)
def fracture_km_curves(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Kaplan-Meier curves of time to first fragility fracture by aromatase-inhibitor exposure
    during follow-up (ever vs never). Table `results.km_curves`."""
    cutoff = quarter_cutoff(context.partition_key)
    with warehouse.get_connection() as con:
        members = con.execute(
            "SELECT ai_ever, follow_up_days, follow_up_end_reason FROM cohort.members WHERE data_cutoff = ?", [cutoff]
        ).df()
        curves = kaplan_meier_by_group(members, "ai_ever", "ai_ever", AI_GROUPS)
        curves.insert(0, "data_cutoff", cutoff)
        con.execute(sql_text("models/km_curves"))
        con.execute("DELETE FROM results.km_curves WHERE data_cutoff = ?", [cutoff])
        con.execute("INSERT INTO results.km_curves BY NAME SELECT * FROM curves")
    events = members.groupby("ai_ever")["follow_up_end_reason"].apply(lambda s: int((s == "fracture").sum()))
    png = figure_png(km_figure(curves, f"Fragility fracture by AI exposure, cutoff {cutoff}"))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(curves),
            "fractures": dg.MetadataValue.md(
                markdown_table(events.rename(index=AI_GROUPS).map(suppress_count).rename("fractures").reset_index())
            ),
            "km_plot": dg.MetadataValue.md(f"![Kaplan-Meier]({png_data_uri(png)})"),
        }
    )
