"""Models stage: the quarter's estimates, kept in `results.*` (thin assets over cohort/fracture.py and
cohort/bmd.py).

Fragility fracture (issue 8), in dependency order:
  results/km_curves, results/km_curves_e2_tier   Kaplan-Meier by ever-AI and by estradiol tier at index
  results/cumulative_incidence                   Aalen-Johansen, death competing
  results/incidence_rates                        per 1,000 person-years by current exposure
  analysis/fracture_iptw_weights, results/balance, results/propensity_diagnostics
                                                 propensity score for AI initiation, IPTW, balance
  results/fracture_cox, results/fracture_ph_tests
                                                 Cox models with the diagnostics gate, PH tests
BMD change (issue 7):
  results/bmd_change, results/bmd_trajectory     linear mixed models of log sBMD per skeletal site

SQL: the queries reading each model's inputs are sql/models/inputs/*.sql; each table's DDL and
column documentation, sql/models/<table>.sql. Every count of people, events or scans shown in
metadata is small-cell suppressed; the tables keep exact counts for statisticians.

Dagster imports this module to load the code location, so the estimators (and numpy, pandas and
scipy under them) are imported inside the asset bodies: they take seconds to import.
"""

import math
import re
import time

import dagster as dg

from cohort.dictionary import apply_column_docs
from cohort.display import markdown_image, markdown_table, suppress_count, suppress_numbers_in_text
from cohort.figures import (
    BMD_SITE_LABELS,
    bmd_forest_figure,
    bmd_residual_figure,
    bmd_trajectory_figure,
    cif_figure,
    forest_figure,
    km_figure_at_risk,
    ps_overlap_figure,
)
from cohort.protocol import load_protocol
from cohort.sql import set_variables, sql_text
from pipelines.metadata import (
    column_schema,
    row_count,
    small_cell_threshold,
    sql_description,
    table_count_ledger,
    table_metadata,
)
from pipelines.partitions import quarter_cutoff, quarter_partitions
from pipelines.resources import Warehouse

MODEL_KW = dict(kinds={"duckdb", "python"}, owners=["team:biostatistics"], group_name="models")
AT_RISK_YEARS = (0, 1, 2, 3, 4, 5, 6, 7, 8)
GATE_CHECK = "fracture_diagnostics_gate"


def _table_spec(table: str, deps: list, meaning: str, *inputs: str) -> dg.AssetSpec:
    """A table this stage writes: its columns declared up front (shown before any materialization), and
    the SQL files its asset runs named in its description (the input queries, then the table's DDL)."""
    schema, name = table.split(".")
    return dg.AssetSpec(
        [schema, name], deps=deps, metadata=table_metadata(table), **MODEL_KW,
        description=sql_description(meaning, table, *(f"models/inputs/{query}" for query in inputs), f"models/{name}"),
    )


def _query(con, name: str, **variables):
    """Run the query sql/models/inputs/<name>.sql with `variables` set; fetch its rows from the result."""
    set_variables(con, **variables)
    return con.execute(sql_text(f"models/inputs/{name}"))


def _replace_rows(con, table: str, cutoff, frame) -> dict:
    """Replace the cutoff's rows of `table` (DDL: sql/models/<name>.sql) with `frame`, atomically.
    Returns the metadata every table of this stage shows: its data cutoff and columns as written."""
    con.execute(sql_text(f"models/{table.split('.')[1]}"))
    apply_column_docs(con)  # the columns the DDL leaves undescribed, from sql/warehouse/column_docs.csv
    con.register("result_frame", frame.assign(data_cutoff=cutoff))
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {table} WHERE data_cutoff = ?", [cutoff])
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM result_frame")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("result_frame")
    return {"data_cutoff": str(cutoff), "dagster/column_schema": column_schema(con, table)}


def _write_results(con, table: str, cutoff, frame) -> dict:
    """`_replace_rows` for a results table: its rows are estimates, not people, so their count is shown as is."""
    return {"dagster/row_count": len(frame), **_replace_rows(con, table, cutoff, frame)}


# A count in an estimator's message ("for all 3 events", "(8 patients, 30 scans)"); a number after
# "than" is a threshold ("fewer than 10 events"), not a count.
_COUNT_IN_TEXT = re.compile(r"(?<!than )(?<![\w.,])\d[\d,]* (?:events?|patients?|scans?|members?)\b")


def _suppress_counts_in_text(text: str, threshold: int) -> str:
    """An estimator's message as metadata shows it: the counts in it small-cell suppressed."""
    return _COUNT_IN_TEXT.sub(lambda match: suppress_numbers_in_text(match.group(), threshold), text)


def _image(figure, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_image(figure, alt))


def _at_risk_shown(curves, threshold: int):
    """Numbers at risk at whole years (within follow-up) under a Kaplan-Meier plot, suppressed."""
    from cohort.fracture import numbers_at_risk

    horizon = [t for t in AT_RISK_YEARS if t <= curves["time_years"].max()]
    table = numbers_at_risk(curves, horizon)
    for t in horizon:
        table[float(t)] = table[float(t)].map(lambda n: suppress_count(n, threshold))
    return table


def _fmt_hr(row) -> str:
    if not math.isfinite(row.hazard_ratio):
        return "not estimable"
    return f"{row.hazard_ratio:.2f} ({row.ci_low:.2f}–{row.ci_high:.2f})"


def _fmt_p(p) -> str:
    return "" if p is None or not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _fmt_pct_ci(estimate, low, high) -> str:
    if estimate is None or not math.isfinite(estimate):
        return "not estimable"
    return f"{estimate:+.2f} ({low:+.2f} to {high:+.2f})"


# ---------------------------------------------------------------------------------------------
# Descriptive: Kaplan-Meier, cumulative incidence, incidence rates
# ---------------------------------------------------------------------------------------------


@dg.multi_asset(
    name="fracture_km_curves",
    specs=[
        _table_spec(
            "results.km_curves", [["cohort", "members"]],
            "Kaplan-Meier curves of time to first fragility fracture from index (first testosterone dispensing) for "
            "men who started an aromatase inhibitor during follow-up vs those who did not, with 95% bands and numbers "
            "at risk. Descriptive: AI status is known only after follow-up starts, so the AI comparison itself is "
            "results/fracture_cox.",
            "fracture_follow_up",
        ),
        _table_spec(
            "results.km_curves_e2_tier", [["cohort", "members"]],
            "Kaplan-Meier curves of time to first fragility fracture by estradiol tier at index (<10, 10-<20, "
            "20-<40, >=40 pg/mL, unknown): do men starting testosterone with low estradiol fracture sooner?",
            "fracture_follow_up",
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def fracture_km_curves(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Kaplan-Meier of time to first fragility fracture by ever-AI and by baseline estradiol tier."""
    import pandas as pd

    from cohort.fracture import AI_EVER_GROUPS, E2_TIER_GROUPS, kaplan_meier_by_group

    cutoff = quarter_cutoff(context.partition_key)
    threshold = small_cell_threshold()
    groupings = {  # table: (cohort.members column, its groups, what the curves compare)
        "results.km_curves": ("ai_ever", AI_EVER_GROUPS, "AI during follow-up"),
        "results.km_curves_e2_tier": ("e2_tier_at_index", E2_TIER_GROUPS, "estradiol tier at index"),
    }
    with warehouse.get_connection() as con:
        members = _query(con, "fracture_follow_up", data_cutoff=cutoff).df()
        curves = {table: kaplan_meier_by_group(members, column, column, groups)
                  for table, (column, groups, _) in groupings.items()}
        written = {table: _write_results(con, table, cutoff, curves[table]) for table in groupings}
    fractures = members["follow_up_end_reason"] == "fracture"
    for table, (column, groups, what) in groupings.items():
        in_group = [members[column] == value for value in groups]
        counts = pd.DataFrame({
            "group": list(groups.values()),
            "members": [suppress_count(int(group.sum()), threshold) for group in in_group],
            "fractures": [suppress_count(int((fractures & group).sum()), threshold) for group in in_group],
        })
        metadata = {**written[table], "fractures": dg.MetadataValue.md(markdown_table(counts))}
        if not curves[table].empty:
            figure = km_figure_at_risk(curves[table], f"Fragility fracture by {what}, cutoff {cutoff}",
                                       _at_risk_shown(curves[table], threshold))
            metadata["km_plot"] = _image(figure, "Kaplan-Meier")
        yield dg.MaterializeResult(asset_key=table.split("."), metadata=metadata)


@dg.multi_asset(
    name="fracture_cumulative_incidence",
    specs=[_table_spec(
        "results.cumulative_incidence", [["cohort", "members"]],
        "Cumulative incidence of first fragility fracture with death as a competing risk (Aalen-Johansen), by AI "
        "during follow-up and by estradiol tier at index: the share of men who fracture by each year, not counting "
        "the dead as still at risk (1 - Kaplan-Meier overstates it when deaths are common). Ties are handled "
        "exactly, so reruns are identical.",
        "fracture_follow_up",
    )],
    partitions_def=quarter_partitions,
    pool="duckdb",
)
def fracture_cumulative_incidence(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Aalen-Johansen cumulative incidence of first fragility fracture, death competing."""
    import numpy as np
    import pandas as pd

    from cohort.fracture import AI_EVER_GROUPS, E2_TIER_GROUPS, cumulative_incidence_by_group

    cutoff = quarter_cutoff(context.partition_key)
    with warehouse.get_connection() as con:
        members = _query(con, "fracture_follow_up", data_cutoff=cutoff).df()
        cif = pd.concat([
            cumulative_incidence_by_group(members, "ai_ever", "ai_ever", AI_EVER_GROUPS),
            cumulative_incidence_by_group(members, "e2_tier_at_index", "e2_tier_at_index", E2_TIER_GROUPS),
        ], ignore_index=True)
        metadata = _write_results(con, "results.cumulative_incidence", cutoff, cif)
    rows = []
    for (curve, label), group in cif.groupby(["curve", "group_label"], sort=False):
        row = {"grouping": curve, "group": label}
        times = group["time_years"].to_numpy()
        for year in (1, 3, 5):
            i = np.searchsorted(times, year, side="right") - 1
            g = group.iloc[i]
            row[f"{year} y"] = f"{100 * g.cif:.1f}% ({100 * g.ci_low:.1f}–{100 * g.ci_high:.1f})"
        rows.append(row)
    if rows:
        metadata["cumulative_incidence"] = dg.MetadataValue.md(markdown_table(pd.DataFrame(rows)))
        for curve, name in (("ai_ever", "cif_plot_ai"), ("e2_tier_at_index", "cif_plot_e2_tier")):
            part = cif[cif["curve"] == curve]
            if not part.empty:
                metadata[name] = _image(cif_figure(part, f"Fragility fracture, death competing ({curve}), {cutoff}"),
                                        "Cumulative incidence")
    return dg.MaterializeResult(metadata=metadata)


@dg.multi_asset(
    name="fracture_incidence_rates",
    specs=[_table_spec(
        "results.incidence_rates", [["analysis", "fracture_intervals"]],
        "Fragility fractures per 1,000 person-years (exact Poisson 95% CI) by what the men were exposed to at the "
        "time: on an aromatase inhibitor or not, each estradiol tier (all assays and LC-MS/MS only), "
        "glucocorticoids. Crude rates; the adjusted comparison is results/fracture_cox.",
        "fracture_person_time",
    )],
    partitions_def=quarter_partitions,
    pool="duckdb",
)
def fracture_incidence_rates(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Crude fragility-fracture rates per 1,000 person-years by current exposure."""
    import pandas as pd

    from cohort.fracture import AI_CURRENT_GROUPS, E2_TIER_GROUPS, GLUCOCORTICOID_GROUPS, incidence_rates_by_exposure

    cutoff = quarter_cutoff(context.partition_key)
    threshold = small_cell_threshold()
    with warehouse.get_connection() as con:
        person_time = _query(con, "fracture_person_time", data_cutoff=cutoff).df()
        if person_time.empty:
            rates = incidence_rates_by_exposure(person_time, {})
        else:
            rates = incidence_rates_by_exposure(person_time, {
                "ai_current": AI_CURRENT_GROUPS,
                "e2_tier": E2_TIER_GROUPS,
                "e2_tier_lcms": {k: f"{v} (LC-MS/MS)" for k, v in E2_TIER_GROUPS.items()},
                "glucocorticoid_current": GLUCOCORTICOID_GROUPS,
            })
        metadata = _write_results(con, "results.incidence_rates", cutoff, rates)
    shown = pd.DataFrame({
        "exposure": rates["exposure"],
        "group": rates["group_label"],
        "fractures": rates["events"].map(lambda n: suppress_count(n, threshold)),
        "person-years": rates["person_years"].map(lambda y: f"{y:,.0f}"),
        "per 1,000 py (95% CI)": [f"{r:.1f} ({lo:.1f}–{hi:.1f})" for r, lo, hi in
                                  zip(rates["rate_per_1000py"], rates["ci_low"], rates["ci_high"])],
    })
    metadata["incidence_rates"] = dg.MetadataValue.md(markdown_table(shown, max_rows=40))
    return dg.MaterializeResult(metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Confounding control for the AI comparison
# ---------------------------------------------------------------------------------------------


@dg.multi_asset(
    name="fracture_propensity",
    specs=[
        _table_spec(
            "analysis.fracture_iptw_weights", [["cohort", "members"]],
            "Per member: the propensity score (probability of starting an aromatase inhibitor given age, BMI, "
            "estradiol, testosterone, vitamin D, glucocorticoid use, femoral-neck sBMD, site and scanner at "
            "baseline), preference score and stabilized, truncated inverse-probability weight.",
            "propensity_covariates",
        ),
        _table_spec(
            "results.balance", [["cohort", "members"]],
            "Covariate balance between AI initiators and non-initiators before and after weighting (standardized "
            "mean differences, |SMD| > 0.1 flagged): does weighting make the groups comparable on what was "
            "measured at baseline?",
            "propensity_covariates",
        ),
        _table_spec(
            "results.propensity_diagnostics", [["cohort", "members"]],
            "Diagnostics of the AI-initiation propensity model: c-statistic, equipoise (share with preference "
            "score 0.3-0.7), weight truncation, effective sample sizes and worst imbalance, each judged against "
            "its threshold.",
            "propensity_covariates",
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def fracture_propensity(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Propensity score for AI initiation, stabilized IPTW with truncation, balance and equipoise."""
    import pandas as pd

    from cohort.fracture import (
        AI_EVER_GROUPS,
        BalanceSummary,
        DiagnosticsGate,
        FractureModelSettings,
        PropensityScoreModel,
        balance_table,
    )

    cutoff = quarter_cutoff(context.partition_key)
    protocol = load_protocol()
    settings = FractureModelSettings.from_protocol(protocol)
    threshold = protocol.reporting.small_cell_threshold
    gate = DiagnosticsGate(settings)
    with warehouse.get_connection() as con:
        members = _query(con, "propensity_covariates", data_cutoff=cutoff).df()
        problem = None
        try:
            model = PropensityScoreModel.from_settings(settings).fit(members)
        except ValueError as error:  # no AI initiators (or no non-initiators): nothing to compare
            problem = str(error)
            context.log.warning(f"propensity model not fitted: {problem}")
            model = None
        if model is None:
            weights = members[["source_site", "patient_key", "ai_ever"]].iloc[:0].assign(
                propensity_score=[], preference_score=[], iptw_untruncated=[], iptw=[])
            balance = balance_table(pd.DataFrame(index=members.index), members["ai_ever"].fillna(False))
            summary = {"n_treated": int(members["ai_ever"].sum()), "n_control": int((~members["ai_ever"]).sum()),
                       "fit_method": f"not fitted: {problem}"}
        else:
            scores = model.scores()
            weights = pd.concat([members[["source_site", "patient_key", "ai_ever"]], scores.drop(columns="treated")],
                                axis=1)
            balance = balance_table(model.design_, model.treated_, model.weights_, settings.smd_threshold)
            summary = model.summary
        balance = balance.assign(comparison="ai_ever")
        check = BalanceSummary.from_results(balance, summary.get("equipoise", float("nan")))
        diagnostics = pd.DataFrame([{
            "comparison": "ai_ever", **summary,
            "max_abs_smd_before": check.max_abs_smd_before, "max_abs_smd_after": check.max_abs_smd_after,
            "balance_passed": model is not None and gate.check_balance(check.max_abs_smd_after),
            "equipoise_passed": model is not None and gate.check_equipoise(check.equipoise),
            "smd_threshold": settings.smd_threshold, "equipoise_threshold": settings.equipoise_threshold,
        }])
        weights_metadata = _replace_rows(con, "analysis.fracture_iptw_weights", cutoff, weights)
        balance_metadata = _write_results(con, "results.balance", cutoff, balance)
        diagnostics_metadata = _write_results(con, "results.propensity_diagnostics", cutoff, diagnostics)

    members_shown = table_count_ledger(len(weights), len(weights), threshold)  # one row per member: patients
    yield dg.MaterializeResult(asset_key=["analysis", "fracture_iptw_weights"], metadata={
        **weights_metadata, **row_count(members_shown.get("rows")),
        "ai_initiators": suppress_count(summary["n_treated"], threshold),
        "non_initiators": suppress_count(summary["n_control"], threshold),
        "fit_method": summary["fit_method"],
    })
    flag = lambda bad: "**IMBALANCED**" if bad else ""  # noqa: E731
    shown = pd.DataFrame({
        "covariate": balance["covariate_label"],
        "SMD before": balance["smd_before"].map(lambda v: f"{v:+.3f}"),
        "SMD after": balance["smd_after"].map(lambda v: f"{v:+.3f}"),
        "flag (after)": balance["imbalanced_after"].map(flag),
    })
    yield dg.MaterializeResult(asset_key=["results", "balance"], metadata={
        **balance_metadata,
        "max_abs_smd_before": float(check.max_abs_smd_before),
        "max_abs_smd_after": float(check.max_abs_smd_after),
        "balance": dg.MetadataValue.md(markdown_table(shown, max_rows=60)),
        "balance_passed": bool(diagnostics["balance_passed"].iloc[0]),
    })
    metadata = {
        **diagnostics_metadata,
        "c_statistic": float(summary.get("c_statistic", float("nan"))),
        "equipoise": float(check.equipoise),
        "equipoise_passed": bool(diagnostics["equipoise_passed"].iloc[0]),
        "balance_passed": bool(diagnostics["balance_passed"].iloc[0]),
        "truncation": str(summary.get("truncation", "")),
    }
    if model is not None:
        figure = ps_overlap_figure(model.preference_scores_, model.treated_, AI_EVER_GROUPS,
                                   f"Preference score (AI initiation), cutoff {cutoff}", settings.equipoise_bounds)
        metadata["ps_overlap_plot"] = _image(figure, "Preference score overlap")
    yield dg.MaterializeResult(asset_key=["results", "propensity_diagnostics"], metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Cox models
# ---------------------------------------------------------------------------------------------

COX_DEPS = [["analysis", "fracture_intervals"], ["cohort", "members"], ["analysis", "fracture_iptw_weights"]]


@dg.multi_asset(
    name="fracture_cox_models",
    specs=[
        _table_spec(
            "results.fracture_cox", [*COX_DEPS, ["results", "balance"], ["results", "propensity_diagnostics"]],
            "Hazard ratios for first fragility fracture: the primary Cox model with time-varying current AI use, "
            "current estradiol tier (vs 20-<40 pg/mL) and glucocorticoid use adjusted for age, BMI and baseline "
            "femoral-neck sBMD (also with LC-MS/MS-only tiers); AI initiation (intention to treat) weighted by IPTW, "
            "and crude; and death (cause-specific) as a secondary outcome. Every row carries its diagnostics-gate "
            "verdict (balance, equipoise, events, MDRR).",
            "fracture_cox_members", "fracture_cox_intervals",
        ),
        _table_spec(
            "results.fracture_ph_tests", COX_DEPS,
            "Proportional-hazards diagnostics of every Cox model: scaled Schoenfeld residual tests per term (rank "
            "time transform, as lifelines; configurable). A small p-value means that term's hazard ratio changes "
            "over follow-up.",
            "fracture_cox_members", "fracture_cox_intervals",
        ),
    ],
    check_specs=[dg.AssetCheckSpec(
        GATE_CHECK, asset=["results", "fracture_cox"], blocking=False,
        description="Every result of the primary and IPTW models passes the diagnostics gate (balance, "
        "equipoise, event count, MDRR); failing rows are flagged in results.fracture_cox.",
    )],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def fracture_cox_models(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Cox models of time to first fragility fracture (and death), with the diagnostics gate."""
    import numpy as np
    import pandas as pd

    from cohort.fracture import (
        ADJUSTED_TERMS,
        E2_TIER_ORDER,
        EVENT_ORDER,
        BalanceSummary,
        FractureModelSettings,
        counting_process_frame,
        fit_cox,
        fit_iptw_cox,
        fracture_cox_table,
        intervals_from_codes,
        ph_tests_table,
    )

    cutoff = quarter_cutoff(context.partition_key)
    protocol = load_protocol()
    settings = FractureModelSettings.from_protocol(protocol)
    threshold = protocol.reporting.small_cell_threshold
    with warehouse.get_connection() as con:
        members = _query(con, "fracture_cox_members", data_cutoff=cutoff).df()
        coded = _query(con, "fracture_cox_intervals", data_cutoff=cutoff, e2_tiers=list(E2_TIER_ORDER),
                       events=EVENT_ORDER).fetchnumpy()
        balance = con.execute("SELECT * FROM results.balance WHERE data_cutoff = ?", [cutoff]).df()
        ps = con.execute(
            "SELECT equipoise FROM results.propensity_diagnostics WHERE data_cutoff = ? AND comparison = 'ai_ever'",
            [cutoff]).fetchone()
    intervals = intervals_from_codes(coded)
    del coded
    fit = dict(alpha=settings.alpha, ph_time_transforms=(settings.ph_time_transform,))
    results, seconds = [], {}
    clock = time.monotonic()

    def lap(name):
        nonlocal clock
        seconds[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    frame = counting_process_frame(intervals, members, ADJUSTED_TERMS, id_columns=["patient_id"])
    lap("rows: adjusted model")
    results.append(fit_cox(frame, "time_varying_adjusted", "fracture", **fit))
    lap("time_varying_adjusted")
    results.append(fit_cox(frame, "death_cause_specific", "death", **fit))
    lap("death_cause_specific")
    del frame
    if settings.lcms_sensitivity:
        lcms = counting_process_frame(intervals, members, ADJUSTED_TERMS, e2_column="e2_tier_lcms",
                                      id_columns=["patient_id"])
        results.append(fit_cox(lcms, "time_varying_adjusted_lcms", "fracture", **fit))
        lap("time_varying_adjusted_lcms")
        del lcms
    weights = members["iptw"].to_numpy(dtype=float)
    weighted = np.isfinite(weights).any()  # no weights when the propensity model could not be fitted
    itt = counting_process_frame(intervals, members, ["ai_ever"], weights=weights if weighted else None,
                                 id_columns=["patient_id"])
    if weighted:
        results.append(fit_iptw_cox(None, None, None, model="iptw_itt", frame=itt, weighted=True, **fit))
    results.append(fit_iptw_cox(None, None, None, model="crude_itt", frame=itt, weighted=False, **fit))
    lap("iptw_itt and crude_itt")
    del itt
    for result in results:
        if result.error:
            context.log.warning(f"{result.model}: not estimable: {result.error}")
    summary = BalanceSummary.from_results(balance, ps[0]) if ps and ps[0] is not None and len(balance) else None
    cox = fracture_cox_table(results, summary, settings)
    ph = ph_tests_table(results)
    with warehouse.get_connection() as con:
        cox_metadata = _write_results(con, "results.fracture_cox", cutoff, cox)
        ph_metadata = _write_results(con, "results.fracture_ph_tests", cutoff, ph)

    shown = pd.DataFrame({
        "model": cox["model"],
        "term": cox["term_label"],
        "HR (95% CI)": [_fmt_hr(r) for r in cox.itertuples()],
        "p": cox["p_value"].map(_fmt_p),
        "PH test p": cox["ph_p_value"].map(_fmt_p),
        "events": cox["n_events"].map(lambda n: suppress_count(n, threshold)),
        "events exposed": cox["n_events_exposed"].map(lambda n: suppress_count(n, threshold)),
        "diagnostics": ["passed" if ok else f"**FAILED**: {_suppress_counts_in_text(notes, threshold)}"
                        for ok, notes in zip(cox["diagnostics_passed"], cox["diagnostics_notes"])],
    })
    primary = cox[cox["model"].isin(["time_varying_adjusted", "iptw_itt", "crude_itt"])]
    metadata = {
        **cox_metadata,
        "hazard_ratios": dg.MetadataValue.md(markdown_table(shown, max_rows=60)),
        "results_failing_diagnostics": int((~cox["diagnostics_passed"]).sum()),
        "seconds": dg.MetadataValue.json(seconds),
    }
    if len(primary):
        metadata["forest_plot"] = _image(
            forest_figure(primary.assign(term_label=primary["model"] + ": " + primary["term_label"]),
                          f"Fragility fracture hazard ratios, cutoff {cutoff}"), "Hazard ratios")
    yield dg.MaterializeResult(asset_key=["results", "fracture_cox"], metadata=metadata)
    yield dg.MaterializeResult(asset_key=["results", "fracture_ph_tests"], metadata={
        **ph_metadata,
        "ph_tests": dg.MetadataValue.md(markdown_table(
            ph[ph["time_transform"] == settings.ph_time_transform].assign(
                p_value=lambda f: f["p_value"].map(_fmt_p), test_statistic=lambda f: f["test_statistic"].round(2)),
            max_rows=60)),
    })
    gated = cox[cox["model"].isin(["time_varying_adjusted", "iptw_itt"]) & cox["term"].isin(["ai_current", "ai_ever"])]
    failing = gated[~gated["diagnostics_passed"]]
    yield dg.AssetCheckResult(
        check_name=GATE_CHECK, asset_key=["results", "fracture_cox"], passed=failing.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description="AI results pass the diagnostics gate" if failing.empty else _suppress_counts_in_text(
            "; ".join(f"{r.model}/{r.term}: {r.diagnostics_notes}" for r in failing.itertuples()), threshold),
        metadata={"failing_results": len(failing)},
    )


# =============================================================================================
# BMD change (issue 7): linear mixed models of log sBMD per skeletal site (cohort/bmd.py).
# =============================================================================================


class BmdModelConfig(dg.Config):
    """Optimizer settings of the BMD mixed models (defaults suit every cohort seen so far)."""

    maxiter: int = 100
    gtol: float = 1e-6
    blas_threads: int = 1  # 0: the BLAS library's default (see cohort.bmd.BmdChangeModel)


def bmd_rows(con, cutoff, site: str):
    """One skeletal site's scans at the data cutoff, as the mixed models read them (also timed by
    bench/bench_bmd.py)."""
    return _query(con, "bmd_rows", data_cutoff=cutoff, skeletal_site=site).df()


@dg.multi_asset(
    name="bmd_change_models",
    specs=[
        _table_spec(
            "results.bmd_change", [["analysis", "bmd_long"]],
            "Does bone thin faster while a man is on an aromatase inhibitor, or while his estradiol is low? Per "
            "skeletal site (lumbar spine, femoral neck, total hip), a linear mixed model of log standardized BMD over "
            "time gives the difference in annual BMD change (% per year, 95% CI, p) for current AI vs none and for "
            "each estradiol tier vs 20-<40 pg/mL, adjusted for baseline age and BMI (and their effect on the rate of "
            "change), scanner manufacturer and site of care, with each man's own baseline and rate (random intercept "
            "and slope, REML). Also an LC-MS/MS-only sensitivity analysis and the crude AI contrast. A model that "
            "does not converge fails this asset.",
            "bmd_rows",
        ),
        _table_spec(
            "results.bmd_trajectory", [["analysis", "bmd_long"]],
            "Model-predicted mean change in BMD from baseline (%, 95% CI) year by year for men on and off an AI and "
            "in each estradiol tier, at reference age and BMI, from the primary models of results/bmd_change: the "
            "report's trajectory plot.",
            "bmd_rows",
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def bmd_change_models(context: dg.AssetExecutionContext, config: BmdModelConfig, warehouse: Warehouse):
    """Mixed models of BMD change per skeletal site (primary, LC-MS/MS-only tiers, crude) and the
    trajectories they predict. Non-convergence raises ConvergenceError naming site and analysis."""
    import pandas as pd

    from cohort.bmd import SKELETAL_SITES, fit_bmd_models, term_labels, tier_group_labels

    cutoff = quarter_cutoff(context.partition_key)
    protocol = load_protocol()
    threshold = protocol.reporting.small_cell_threshold
    bounds = tuple(protocol.estradiol.tier_bounds_pg_ml)
    labels = term_labels(bounds)
    with warehouse.get_connection() as con:
        con.execute(sql_text("cohort/schema"))  # analysis.bmd_long exists even before the cohort stage ran

        def site_rows(site):
            return lambda: bmd_rows(con, cutoff, site)

        fits = fit_bmd_models([(site, site_rows(site)) for site in SKELETAL_SITES],
                              tier_labels=tier_group_labels(bounds), keep_models=False, maxiter=config.maxiter,
                              gtol=config.gtol, blas_threads=config.blas_threads or None)
        change_metadata = _write_results(con, "results.bmd_change", cutoff, fits.change)
        trajectory_metadata = _write_results(con, "results.bmd_trajectory", cutoff, fits.trajectory)
    for why in fits.not_estimable.values():
        context.log.warning(f"BMD model not fitted: {why}")
    change, trajectory = fits.change, fits.trajectory

    shown = pd.DataFrame({
        "site": change["skeletal_site"].map(lambda s: BMD_SITE_LABELS.get(s, s)),
        "analysis": change["analysis"],
        "term": change["term"].map(lambda t: labels.get(t, t)),
        "% per year (95% CI)": [_fmt_pct_ci(r.estimate_pct_per_year, r.ci_low, r.ci_high) for r in change.itertuples()],
        "p": change["p_value"].map(_fmt_p),
        "patients": change["n_patients"].map(lambda n: suppress_count(n, threshold)),
        "scans": change["n_scans"].map(lambda n: suppress_count(n, threshold)),
        "converged": change["converged"].map(lambda c: "yes" if c else "NO"),
    })
    models = change.drop_duplicates(["skeletal_site", "analysis"])
    diagnostics = pd.DataFrame({
        "site": models["skeletal_site"], "analysis": models["analysis"],
        "converged": models["converged"], "REML llf": models["reml_llf"].round(2),
        "SD intercept (log)": models["sd_intercept_log"].round(4),
        "SD slope (%/y)": models["sd_slope_pct_per_year"].round(3),
        "corr": models["corr_intercept_slope"].round(3), "residual SD (log)": models["residual_sd_log"].round(4),
        "boundary": models["on_boundary"], "iterations": models["n_iterations"],
        "max |grad|": models["grad_norm"].map(lambda g: f"{g:.1e}"),
        "patients": models["n_patients"].map(lambda n: suppress_count(n, threshold)),
        "scans": models["n_scans"].map(lambda n: suppress_count(n, threshold)),
        "patients excluded": models["n_patients_excluded"].map(lambda n: suppress_count(n, threshold)),
        "terms dropped": models["terms_dropped"], "fit s": models["fit_seconds"].round(2),
    })
    metadata = {
        **change_metadata,
        "bmd_change": dg.MetadataValue.md(markdown_table(shown, max_rows=60)),
        "model_diagnostics": dg.MetadataValue.md(markdown_table(diagnostics, max_rows=20)),
        "converged": bool(change["converged"].all()) if len(change) else True,
        "models_fitted": len(models),
    }
    for site in SKELETAL_SITES:
        part = models[(models["skeletal_site"] == site) & (models["analysis"] == "primary")]
        metadata[f"patients_{site}"] = suppress_count(int(part["n_patients"].iloc[0]), threshold) if len(part) else "0"
    if fits.not_estimable:
        metadata["not_estimable"] = dg.MetadataValue.md(
            "\n".join(f"- {_suppress_counts_in_text(why, threshold)}" for why in fits.not_estimable.values()))
    if len(change):
        metadata["forest_plot"] = _image(
            bmd_forest_figure(change, f"BMD change by exposure, % per year (hollow: sensitivity / crude), {cutoff}",
                              labels), "BMD change forest plot")
    for (site, analysis), model in fits.models.items():
        if analysis == "primary":
            residuals = model.residuals_
            metadata[f"residuals_{site}"] = _image(
                bmd_residual_figure(residuals["fitted"], residuals["std_residual"],
                                    f"{BMD_SITE_LABELS.get(site, site)}: conditional residuals, primary model"),
                f"Residual checks {site}")
    yield dg.MaterializeResult(asset_key=["results", "bmd_change"], metadata=metadata)

    slopes = trajectory.drop_duplicates(["skeletal_site", "exposure_group"])
    trajectory_metadata["annual_change"] = dg.MetadataValue.md(markdown_table(pd.DataFrame({
        "site": slopes["skeletal_site"].map(lambda s: BMD_SITE_LABELS.get(s, s)),
        "group": slopes["group_label"],
        "% per year (95% CI)": [_fmt_pct_ci(r.pct_per_year, r.pct_per_year_ci_low, r.pct_per_year_ci_high)
                                for r in slopes.itertuples()],
    }), max_rows=40))
    if len(trajectory):
        frame = trajectory.rename(columns={"mean_pct_change": "mean"})
        trajectory_metadata["trajectory_plot"] = _image(
            bmd_trajectory_figure(frame, f"Model-predicted BMD change from baseline, {cutoff}"), "BMD trajectories")
    yield dg.MaterializeResult(asset_key=["results", "bmd_trajectory"], metadata=trajectory_metadata)
