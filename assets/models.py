"""Models stage: the quarter's estimates, kept in `results.*` (thin assets over cohort/fracture.py).

Fragility fracture (issue 8), in dependency order:
  results/km_curves, results/km_curves_e2_tier   Kaplan-Meier by ever-AI and by estradiol tier at index
  results/cumulative_incidence                   Aalen-Johansen, death competing
  results/incidence_rates                        per 1,000 person-years by current exposure
  analysis/fracture_iptw_weights, results/balance, results/propensity_diagnostics
                                                 propensity score for AI initiation, IPTW, balance
  results/fracture_cox, results/fracture_ph_tests
                                                 Cox models with the diagnostics gate, PH tests

Every count shown in metadata goes through `suppress_count`; tables keep exact counts for
statisticians. Result-table DDL and column documentation: sql/models/*.sql.
"""

import time

import dagster as dg
import numpy as np
import pandas as pd

from cohort.bmd import SKELETAL_SITES as BMD_SITES
from cohort.bmd import fit_bmd_models, term_labels, tier_group_labels
from cohort.display import figure_png, markdown_table, png_data_uri, suppress_count
from cohort.figures import (
    BMD_SITE_LABELS,
    bmd_forest_figure,
    bmd_residual_figure,
    cif_figure,
    forest_figure,
    km_figure_at_risk,
    ps_overlap_figure,
)
from cohort.fracture import (
    ADJUSTED_TERMS,
    AI_CURRENT_GROUPS,
    AI_EVER_GROUPS,
    E2_TIER_GROUPS,
    E2_TIER_ORDER,
    GLUCOCORTICOID_GROUPS,
    BalanceSummary,
    DiagnosticsGate,
    FractureModelSettings,
    PropensityScoreModel,
    balance_table,
    counting_process_frame,
    cumulative_incidence_by_group,
    fit_cox,
    fit_iptw_cox,
    fracture_cox_table,
    incidence_rates_by_exposure,
    kaplan_meier_by_group,
    numbers_at_risk,
    ph_tests_table,
)
from cohort.protocol import load_protocol
from cohort.sql import sql_text
from pipelines.metadata import column_schema
from pipelines.partitions import quarter_cutoff, quarter_partitions
from pipelines.resources import Warehouse

AI_GROUPS = AI_EVER_GROUPS  # kept: the report and older code import this name
MODEL_KW = dict(kinds={"duckdb", "python"}, owners=["team:biostatistics"], group_name="models")
AT_RISK_YEARS = (0, 1, 2, 3, 4, 5, 6, 7, 8)
EVENT_CATEGORIES = ["censored", "fracture", "death"]


def fracture_settings() -> FractureModelSettings:
    """Thresholds of the fracture models: the protocol's [fracture_models] section when it has one,
    else the defaults of FractureModelSettings."""
    section = getattr(load_protocol(), "fracture_models", None)
    if section is None:
        return FractureModelSettings()
    values = section.model_dump() if hasattr(section, "model_dump") else dict(section)
    known = set(FractureModelSettings.__dataclass_fields__)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return FractureModelSettings(**values)


def _threshold() -> int:
    return load_protocol().reporting.small_cell_threshold


def _replace(con, table: str, cutoff, frame: pd.DataFrame) -> None:
    """Replace the cutoff's rows of `table` (DDL in sql/models/<name>.sql) with `frame`, atomically."""
    con.execute(sql_text(f"models/{table.split('.')[1]}"))
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


def _image(figure, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}]({png_data_uri(figure_png(figure))})")


def _at_risk_display(curves: pd.DataFrame, threshold: int) -> pd.DataFrame:
    if curves.empty:
        return pd.DataFrame(columns=["group_label"])
    horizon = [t for t in AT_RISK_YEARS if t <= curves["time_years"].max()]
    table = numbers_at_risk(curves, horizon)
    for t in horizon:
        table[float(t)] = table[float(t)].map(lambda n: suppress_count(n, threshold))
    return table


def _fmt_hr(row) -> str:
    if not np.isfinite(row.hazard_ratio):
        return "not estimable"
    return f"{row.hazard_ratio:.2f} ({row.ci_low:.2f}–{row.ci_high:.2f})"


def _fmt_p(p) -> str:
    return "" if p is None or not np.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


# ---------------------------------------------------------------------------------------------
# Descriptive: Kaplan-Meier, cumulative incidence, incidence rates
# ---------------------------------------------------------------------------------------------


@dg.multi_asset(
    name="fracture_km_curves",
    specs=[
        dg.AssetSpec(
            ["results", "km_curves"], deps=[["cohort", "members"]], **MODEL_KW,
            description="Kaplan-Meier curves of time to first fragility fracture from index (first testosterone "
            "dispensing) for men who started an aromatase inhibitor during follow-up vs those who did not, with "
            "95% bands and numbers at risk. Descriptive: AI status is known only after follow-up starts, so the "
            "AI comparison itself is results/fracture_cox. Table `results.km_curves`.",
        ),
        dg.AssetSpec(
            ["results", "km_curves_e2_tier"], deps=[["cohort", "members"]], **MODEL_KW,
            description="Kaplan-Meier curves of time to first fragility fracture by estradiol tier at index "
            "(<10, 10-<20, 20-<40, >=40 pg/mL, unknown): do men starting testosterone with low estradiol "
            "fracture sooner? Table `results.km_curves_e2_tier`.",
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def fracture_km_curves(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Kaplan-Meier of time to first fragility fracture by ever-AI and by baseline estradiol tier."""
    cutoff = quarter_cutoff(context.partition_key)
    threshold = _threshold()
    with warehouse.get_connection() as con:
        members = con.execute(
            "SELECT ai_ever, e2_tier_at_index, follow_up_days, follow_up_end_reason FROM cohort.members "
            "WHERE data_cutoff = ?", [cutoff]
        ).df()
        by_ai = kaplan_meier_by_group(members, "ai_ever", "ai_ever", AI_EVER_GROUPS)
        by_tier = kaplan_meier_by_group(members, "e2_tier_at_index", "e2_tier_at_index", E2_TIER_GROUPS)
        _replace(con, "results.km_curves", cutoff, by_ai)
        _replace(con, "results.km_curves_e2_tier", cutoff, by_tier)
    fractures = members["follow_up_end_reason"] == "fracture"
    for key, curves, column, labels, what in (
        (["results", "km_curves"], by_ai, "ai_ever", AI_EVER_GROUPS, "AI during follow-up"),
        (["results", "km_curves_e2_tier"], by_tier, "e2_tier_at_index", E2_TIER_GROUPS, "estradiol tier at index"),
    ):
        counts = pd.DataFrame({
            "group": list(labels.values()),
            "members": [suppress_count(int((members[column] == v).sum()), threshold) for v in labels],
            "fractures": [suppress_count(int((fractures & (members[column] == v)).sum()), threshold) for v in labels],
        })
        metadata = {"dagster/row_count": len(curves), "data_cutoff": str(cutoff),
                    "fractures": dg.MetadataValue.md(markdown_table(counts))}
        if not curves.empty:
            figure = km_figure_at_risk(curves, f"Fragility fracture by {what}, cutoff {cutoff}",
                                       _at_risk_display(curves, threshold))
            metadata["km_plot"] = _image(figure, "Kaplan-Meier")
        yield dg.MaterializeResult(asset_key=key, metadata=metadata)


@dg.asset(
    key=["results", "cumulative_incidence"],
    deps=[["cohort", "members"]],
    partitions_def=quarter_partitions,
    pool="duckdb",
    **MODEL_KW,
)
def fracture_cumulative_incidence(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Cumulative incidence of first fragility fracture with death as a competing risk (Aalen-Johansen),
    by AI during follow-up and by estradiol tier at index: the share of men who fracture by each year,
    not counting the dead as still at risk (1 - Kaplan-Meier overstates it when deaths are common).
    Ties are handled exactly, so reruns are identical. Table `results.cumulative_incidence`."""
    cutoff = quarter_cutoff(context.partition_key)
    with warehouse.get_connection() as con:
        members = con.execute(
            "SELECT ai_ever, e2_tier_at_index, follow_up_days, follow_up_end_reason FROM cohort.members "
            "WHERE data_cutoff = ?", [cutoff]
        ).df()
        cif = pd.concat([
            cumulative_incidence_by_group(members, "ai_ever", "ai_ever", AI_EVER_GROUPS),
            cumulative_incidence_by_group(members, "e2_tier_at_index", "e2_tier_at_index", E2_TIER_GROUPS),
        ], ignore_index=True)
        _replace(con, "results.cumulative_incidence", cutoff, cif)
    metadata = {"dagster/row_count": len(cif), "data_cutoff": str(cutoff)}
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


@dg.asset(
    key=["results", "incidence_rates"],
    deps=[["analysis", "fracture_intervals"]],
    partitions_def=quarter_partitions,
    pool="duckdb",
    **MODEL_KW,
)
def fracture_incidence_rates(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Fragility fractures per 1,000 person-years (exact Poisson 95% CI) by what the men were exposed to
    at the time: on an aromatase inhibitor or not, each estradiol tier (all assays and LC-MS/MS only),
    glucocorticoids. Crude rates; the adjusted comparison is results/fracture_cox. Table
    `results.incidence_rates`."""
    cutoff = quarter_cutoff(context.partition_key)
    threshold = _threshold()
    with warehouse.get_connection() as con:
        person_time = con.execute(
            "SELECT ai_current, e2_tier, e2_tier_lcms, glucocorticoid_current, "
            "sum(stop_day - start_day)::DOUBLE AS person_days, count(*) FILTER (event = 'fracture') AS events "
            "FROM analysis.fracture_intervals WHERE data_cutoff = ? GROUP BY ALL", [cutoff]
        ).df()
        if person_time.empty:
            rates = incidence_rates_by_exposure(person_time, {})
        else:
            rates = incidence_rates_by_exposure(person_time, {
                "ai_current": AI_CURRENT_GROUPS,
                "e2_tier": E2_TIER_GROUPS,
                "e2_tier_lcms": {k: f"{v} (LC-MS/MS)" for k, v in E2_TIER_GROUPS.items()},
                "glucocorticoid_current": GLUCOCORTICOID_GROUPS,
            })
        _replace(con, "results.incidence_rates", cutoff, rates)
    shown = pd.DataFrame({
        "exposure": rates["exposure"],
        "group": rates["group_label"],
        "fractures": rates["events"].map(lambda n: suppress_count(n, threshold)),
        "person-years": rates["person_years"].map(lambda y: f"{y:,.0f}"),
        "per 1,000 py (95% CI)": [f"{r:.1f} ({lo:.1f}–{hi:.1f})" for r, lo, hi in
                                  zip(rates["rate_per_1000py"], rates["ci_low"], rates["ci_high"])],
    })
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(rates), "data_cutoff": str(cutoff),
        "incidence_rates": dg.MetadataValue.md(markdown_table(shown, max_rows=40)),
    })


# ---------------------------------------------------------------------------------------------
# Confounding control for the AI comparison
# ---------------------------------------------------------------------------------------------

PS_MEMBER_COLUMNS = (
    "source_site, patient_key, ai_ever, age_at_index, bmi, estradiol_pg_ml, testosterone_ng_dl, vitamin_d_ng_ml, "
    "glucocorticoid_at_index, sbmd_femoral_neck, e2_tier_at_index, scanner_manufacturer"
)


@dg.multi_asset(
    name="fracture_propensity",
    specs=[
        dg.AssetSpec(
            ["analysis", "fracture_iptw_weights"], deps=[["cohort", "members"]], **MODEL_KW,
            description="Per member: the propensity score (probability of starting an aromatase inhibitor given "
            "age, BMI, estradiol, testosterone, vitamin D, glucocorticoid use, femoral-neck sBMD, site and "
            "scanner at baseline), preference score and stabilized, truncated inverse-probability weight. "
            "Table `analysis.fracture_iptw_weights`.",
        ),
        dg.AssetSpec(
            ["results", "balance"], deps=[["cohort", "members"]], **MODEL_KW,
            description="Covariate balance between AI initiators and non-initiators before and after weighting "
            "(standardized mean differences, |SMD| > 0.1 flagged): does weighting make the groups comparable on "
            "what was measured at baseline? Table `results.balance`.",
        ),
        dg.AssetSpec(
            ["results", "propensity_diagnostics"], deps=[["cohort", "members"]], **MODEL_KW,
            description="Diagnostics of the AI-initiation propensity model: c-statistic, equipoise (share with "
            "preference score 0.3-0.7), weight truncation, effective sample sizes and worst imbalance, each "
            "judged against its threshold. Table `results.propensity_diagnostics`.",
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def fracture_propensity(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Propensity score for AI initiation, stabilized IPTW with truncation, balance and equipoise."""
    cutoff = quarter_cutoff(context.partition_key)
    settings = fracture_settings()
    threshold = _threshold()
    gate = DiagnosticsGate(settings)
    with warehouse.get_connection() as con:
        members = con.execute(
            f"SELECT {PS_MEMBER_COLUMNS} FROM cohort.members WHERE data_cutoff = ? ORDER BY source_site, patient_key",
            [cutoff],
        ).df()
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
        _replace(con, "analysis.fracture_iptw_weights", cutoff, weights)
        _replace(con, "results.balance", cutoff, balance)
        _replace(con, "results.propensity_diagnostics", cutoff, diagnostics)

    yield dg.MaterializeResult(asset_key=["analysis", "fracture_iptw_weights"], metadata={
        "dagster/row_count": len(weights), "data_cutoff": str(cutoff),
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
        "dagster/row_count": len(balance), "data_cutoff": str(cutoff),
        "max_abs_smd_before": float(check.max_abs_smd_before),
        "max_abs_smd_after": float(check.max_abs_smd_after),
        "balance": dg.MetadataValue.md(markdown_table(shown, max_rows=60)),
        "balance_passed": bool(diagnostics["balance_passed"].iloc[0]),
    })
    metadata = {
        "data_cutoff": str(cutoff),
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

GATE_CHECK = "fracture_diagnostics_gate"


@dg.multi_asset(
    name="fracture_cox_models",
    specs=[
        dg.AssetSpec(
            ["results", "fracture_cox"],
            deps=[["analysis", "fracture_intervals"], ["cohort", "members"], ["analysis", "fracture_iptw_weights"],
                  ["results", "balance"], ["results", "propensity_diagnostics"]],
            **MODEL_KW,
            description="Hazard ratios for first fragility fracture: the primary Cox model with time-varying "
            "current AI use, current estradiol tier (vs 20-<40 pg/mL) and glucocorticoid use adjusted for age, "
            "BMI and baseline femoral-neck sBMD (also with LC-MS/MS-only tiers); AI initiation (intention to treat) "
            "weighted by IPTW, and crude; and death (cause-specific) as a secondary outcome. Every row carries "
            "its diagnostics-gate verdict (balance, equipoise, events, MDRR). Table `results.fracture_cox`.",
        ),
        dg.AssetSpec(
            ["results", "fracture_ph_tests"],
            deps=[["analysis", "fracture_intervals"], ["cohort", "members"], ["analysis", "fracture_iptw_weights"]],
            **MODEL_KW,
            description="Proportional-hazards diagnostics of every Cox model: scaled Schoenfeld residual tests per "
            "term (rank time transform, as lifelines; configurable). A small p-value means that term's hazard ratio changes over "
            "follow-up. Table `results.fracture_ph_tests`.",
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
    cutoff = quarter_cutoff(context.partition_key)
    settings = fracture_settings()
    threshold = _threshold()
    with warehouse.get_connection() as con:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE model_members AS "
            "SELECT (row_number() OVER (ORDER BY m.source_site, m.patient_key) - 1)::INTEGER AS patient_id, "
            "m.source_site, m.patient_key, m.age_at_index, m.bmi, m.sbmd_femoral_neck, m.ai_ever, w.iptw "
            "FROM cohort.members m LEFT JOIN analysis.fracture_iptw_weights w "
            "ON w.data_cutoff = m.data_cutoff AND w.source_site = m.source_site AND w.patient_key = m.patient_key "
            "WHERE m.data_cutoff = ?", [cutoff]
        )
        members = con.execute(
            "SELECT patient_id, age_at_index, bmi, sbmd_femoral_neck, ai_ever, iptw FROM model_members ORDER BY patient_id"
        ).df()
        tiers = ", ".join(f"'{t}'" for t in E2_TIER_ORDER)
        raw = con.execute(
            f"SELECT p.patient_id, i.start_day, i.stop_day, i.ai_current, i.ai_ever, i.glucocorticoid_current, "
            f"(list_position([{tiers}], i.e2_tier) - 1)::TINYINT AS e2_code, "
            f"(list_position([{tiers}], i.e2_tier_lcms) - 1)::TINYINT AS e2_lcms_code, "
            f"(CASE i.event WHEN 'fracture' THEN 1 WHEN 'death' THEN 2 ELSE 0 END)::TINYINT AS event_code "
            f"FROM analysis.fracture_intervals i JOIN model_members p USING (source_site, patient_key) "
            f"WHERE i.data_cutoff = ? ORDER BY p.patient_id, i.start_day", [cutoff]
        ).fetchnumpy()
        balance = con.execute("SELECT * FROM results.balance WHERE data_cutoff = ?", [cutoff]).df()
        ps = con.execute(
            "SELECT equipoise FROM results.propensity_diagnostics WHERE data_cutoff = ? AND comparison = 'ai_ever'",
            [cutoff]).fetchone()
    intervals = _intervals_frame(raw)
    del raw
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
        _replace(con, "results.fracture_cox", cutoff, cox)
        _replace(con, "results.fracture_ph_tests", cutoff, ph)

    shown = pd.DataFrame({
        "model": cox["model"],
        "term": cox["term_label"],
        "HR (95% CI)": [_fmt_hr(r) for r in cox.itertuples()],
        "p": cox["p_value"].map(_fmt_p),
        "PH test p": cox["ph_p_value"].map(_fmt_p),
        "events": cox["n_events"].map(lambda n: suppress_count(n, threshold)),
        "events exposed": cox["n_events_exposed"].map(lambda n: suppress_count(n, threshold)),
        "diagnostics": ["passed" if ok else f"**FAILED**: {notes}"
                        for ok, notes in zip(cox["diagnostics_passed"], cox["diagnostics_notes"])],
    })
    primary = cox[cox["model"].isin(["time_varying_adjusted", "iptw_itt", "crude_itt"])]
    metadata = {
        "dagster/row_count": len(cox), "data_cutoff": str(cutoff),
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
        "dagster/row_count": len(ph), "data_cutoff": str(cutoff),
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
        description="AI results pass the diagnostics gate" if failing.empty else
        "; ".join(f"{r.model}/{r.term}: {r.diagnostics_notes}" for r in failing.itertuples()),
        metadata={"failing_results": len(failing)},
    )


def _intervals_frame(raw: dict) -> pd.DataFrame:
    """Interval columns from DuckDB as the frames cohort.fracture expects (tiers and events as pandas
    Categoricals built from integer codes: no per-row strings)."""
    tiers = list(E2_TIER_ORDER)

    def boolean(values):
        values = np.ma.filled(values, False) if np.ma.isMaskedArray(values) else values
        return np.asarray(values, dtype=bool)

    def codes(values, fill):
        values = np.ma.filled(values, fill) if np.ma.isMaskedArray(values) else values
        return np.asarray(values, dtype=np.int8)

    return pd.DataFrame({
        "patient_id": np.asarray(raw["patient_id"]),
        "start_day": np.asarray(raw["start_day"]),
        "stop_day": np.asarray(raw["stop_day"]),
        "ai_current": boolean(raw["ai_current"]),
        "ai_ever": boolean(raw["ai_ever"]),
        "glucocorticoid_current": boolean(raw["glucocorticoid_current"]),
        "e2_tier": pd.Categorical.from_codes(codes(raw["e2_code"], tiers.index("unknown")), categories=tiers),
        "e2_tier_lcms": pd.Categorical.from_codes(codes(raw["e2_lcms_code"], tiers.index("unknown")), categories=tiers),
        "event": pd.Categorical.from_codes(codes(raw["event_code"], 0), categories=EVENT_CATEGORIES),
    })


# =============================================================================================
# BMD change (issue 7): linear mixed models of log sBMD per skeletal site (cohort/bmd.py).
# Tables results.bmd_change and results.bmd_trajectory; DDL sql/models/bmd_change.sql,
# sql/models/bmd_trajectory.sql.
# =============================================================================================


BMD_ROWS_SQL = """
SELECT dense_rank() OVER (ORDER BY source_site, patient_key)::INTEGER AS patient_id, source_site, manufacturer,
       years_since_baseline, log_sbmd, years_on_ai, years_e2_lt10, years_e2_10_20, years_e2_ge40, years_e2_unknown,
       years_e2_lcms_lt10, years_e2_lcms_10_20, years_e2_lcms_ge40, years_e2_lcms_unknown,
       age_at_index, bmi
FROM analysis.bmd_long WHERE data_cutoff = ? AND skeletal_site = ?
ORDER BY patient_id, scan_date
"""


class BmdModelConfig(dg.Config):
    """Optimizer settings of the BMD mixed models (defaults suit every cohort seen so far)."""

    maxiter: int = 100
    gtol: float = 1e-6
    blas_threads: int = 1  # 0: the BLAS library's default (see cohort.bmd.BmdChangeModel)


def _write_bmd_table(con, table: str, cutoff, frame: pd.DataFrame) -> None:
    """Replace the cutoff's rows of `table` (DDL in sql/models/<name>.sql) with `frame`, atomically."""
    con.execute(sql_text(f"models/{table.split('.')[1]}"))
    con.register("bmd_result_frame", frame.assign(data_cutoff=cutoff))
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {table} WHERE data_cutoff = ?", [cutoff])
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM bmd_result_frame")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("bmd_result_frame")


def _bmd_image(figure, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}]({png_data_uri(figure_png(figure))})")


def _fmt_pct_ci(estimate, low, high) -> str:
    if estimate is None or not np.isfinite(estimate):
        return "not estimable"
    return f"{estimate:+.2f} ({low:+.2f} to {high:+.2f})"


@dg.multi_asset(
    name="bmd_change_models",
    specs=[
        dg.AssetSpec(
            ["results", "bmd_change"], deps=[["analysis", "bmd_long"]], **MODEL_KW,
            description="Does bone thin faster while a man is on an aromatase inhibitor, or while his estradiol is "
            "low? Per skeletal site (lumbar spine, femoral neck, total hip), a linear mixed model of log standardized "
            "BMD over time gives the difference in annual BMD change (% per year, 95% CI, p) for current AI vs none "
            "and for each estradiol tier vs 20-<40 pg/mL, adjusted for baseline age and BMI (and their effect on the "
            "rate of change), scanner manufacturer and site of care, with each man's own baseline and rate (random "
            "intercept and slope, REML). Also an LC-MS/MS-only sensitivity analysis and the crude AI contrast. A model "
            "that does not converge fails this asset. Table `results.bmd_change`.",
        ),
        dg.AssetSpec(
            ["results", "bmd_trajectory"], deps=[["analysis", "bmd_long"]], **MODEL_KW,
            description="Model-predicted mean change in BMD from baseline (%, 95% CI) year by year for men on and off "
            "an AI and in each estradiol tier, at reference age and BMI, from the primary models of "
            "results/bmd_change: the report's trajectory plot. Table `results.bmd_trajectory`.",
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def bmd_change_models(context: dg.AssetExecutionContext, config: BmdModelConfig, warehouse: Warehouse):
    """Mixed models of BMD change per skeletal site (primary, LC-MS/MS-only tiers, crude) and the
    trajectories they predict. Non-convergence raises ConvergenceError naming site and analysis."""
    cutoff = quarter_cutoff(context.partition_key)
    protocol = load_protocol()
    threshold = protocol.reporting.small_cell_threshold
    bounds = tuple(protocol.estradiol.tier_bounds_pg_ml)
    labels = term_labels(bounds)
    with warehouse.get_connection() as con:
        con.execute(sql_text("cohort/schema"))  # analysis.bmd_long exists even before the cohort stage ran

        def site_rows(site):
            return lambda: con.execute(BMD_ROWS_SQL, [cutoff, site]).df()

        fits = fit_bmd_models([(site, site_rows(site)) for site in BMD_SITES], tier_labels=tier_group_labels(bounds),
                              keep_models=False, maxiter=config.maxiter, gtol=config.gtol,
                              blas_threads=config.blas_threads or None)
        _write_bmd_table(con, "results.bmd_change", cutoff, fits.change)
        _write_bmd_table(con, "results.bmd_trajectory", cutoff, fits.trajectory)
        change_schema = column_schema(con, "results.bmd_change")
        trajectory_schema = column_schema(con, "results.bmd_trajectory")
    for (site, analysis), why in fits.not_estimable.items():
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
        "dagster/row_count": len(change), "data_cutoff": str(cutoff),
        "dagster/column_schema": change_schema,
        "bmd_change": dg.MetadataValue.md(markdown_table(shown, max_rows=60)),
        "model_diagnostics": dg.MetadataValue.md(markdown_table(diagnostics, max_rows=20)),
        "converged": bool(change["converged"].all()) if len(change) else True,
        "models_fitted": len(models),
    }
    for site in BMD_SITES:
        part = models[(models["skeletal_site"] == site) & (models["analysis"] == "primary")]
        metadata[f"patients_{site}"] = suppress_count(int(part["n_patients"].iloc[0]), threshold) if len(part) else "0"
    if fits.not_estimable:
        metadata["not_estimable"] = dg.MetadataValue.md(
            "\n".join(f"- {why}" for why in fits.not_estimable.values()))
    if len(change):
        metadata["forest_plot"] = _bmd_image(
            bmd_forest_figure(change, f"BMD change by exposure, % per year (hollow: sensitivity / crude), {cutoff}",
                              labels), "BMD change forest plot")
    for (site, analysis), model in fits.models.items():
        if analysis == "primary":
            residuals = model.residuals_
            metadata[f"residuals_{site}"] = _bmd_image(
                bmd_residual_figure(residuals["fitted"], residuals["std_residual"],
                                    f"{BMD_SITE_LABELS.get(site, site)}: conditional residuals, primary model"),
                f"Residual checks {site}")
    yield dg.MaterializeResult(asset_key=["results", "bmd_change"], metadata=metadata)

    slopes = trajectory.drop_duplicates(["skeletal_site", "exposure_group"])
    trajectory_metadata = {
        "dagster/row_count": len(trajectory), "data_cutoff": str(cutoff),
        "dagster/column_schema": trajectory_schema,
        "annual_change": dg.MetadataValue.md(markdown_table(pd.DataFrame({
            "site": slopes["skeletal_site"].map(lambda s: BMD_SITE_LABELS.get(s, s)),
            "group": slopes["group_label"],
            "% per year (95% CI)": [_fmt_pct_ci(r.pct_per_year, r.pct_per_year_ci_low, r.pct_per_year_ci_high)
                                    for r in slopes.itertuples()],
        }), max_rows=40)),
    }
    if len(trajectory):
        from cohort.figures import bmd_trajectory_figure

        frame = trajectory.rename(columns={"mean_pct_change": "mean"})
        trajectory_metadata["trajectory_plot"] = _bmd_image(
            bmd_trajectory_figure(frame, f"Model-predicted BMD change from baseline, {cutoff}"), "BMD trajectories")
    yield dg.MaterializeResult(asset_key=["results", "bmd_trajectory"], metadata=trajectory_metadata)
