"""Coverage of the planted fracture hazard ratios across generator seeds; writes bench/out/coverage_fracture.json.

    .venv/bin/python bench/coverage_fracture.py --seeds 20 --patients 10000

For each seed: generate a delivery (cohort.generator, truth.json), run the real pipeline through the
cohort stage and the fracture assets (bench_fracture.build_through_cohort / run_group), and compare
results.fracture_cox (model time_varying_adjusted) with truth.json's fracture_model: is every
planted HR inside its 95% CI? Per term: coverage over the seeds where it was estimable, mean
estimated log HR and its bias. The confounding check: the crude and IPTW intention-to-treat HRs of AI
initiation, next to a regression-adjusted ITT model fitted here (ever-AI from initiation + age, BMI,
femoral-neck sBMD and baseline estradiol tier), and the balance before/after weighting.

Results are written after every seed, so an interrupted run still reports what it has. Each seed's
work folder is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fracture import FRACTURE_KEYS, OUT, build_through_cohort, run_group, say  # noqa: E402


def adjusted_itt(settings) -> dict:
    """Regression-adjusted ITT reference: Cox on the intervals with ai_ever + age, BMI, femoral-neck
    sBMD and baseline estradiol tier (complete cases)."""
    import duckdb
    import pandas as pd

    from cohort import fracture as F

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        members = con.execute("SELECT source_site, patient_key, age_at_index, bmi, sbmd_femoral_neck, e2_tier_at_index "
                              "FROM cohort.members").df()
        intervals = con.execute("SELECT source_site, patient_key, start_day, stop_day, ai_ever, event "
                                "FROM analysis.fracture_intervals").df()
    tiers = [t for t in F.E2_TIER_ORDER if t != F.E2_REFERENCE]
    baseline = pd.DataFrame({f"baseline_e2_{t}": (members.e2_tier_at_index == t).astype(float) for t in tiers})
    frame = F.counting_process_frame(intervals, members, ["ai_ever", *F.BASELINE_TERMS])
    pos = frame.data["patient"].to_numpy()
    data = frame.data.assign(**{c: baseline[c].to_numpy()[pos] for c in baseline})
    frame = F.CountingProcessFrame(data, [*frame.terms, *baseline.columns], frame.n_patients_excluded,
                                   frame.n_rows_input)
    result = F.fit_cox(frame, "adjusted_itt")
    if not result.term_estimable("ai_ever"):
        return {"hazard_ratio": None}
    row = result.estimates.loc["ai_ever"]
    return {"hazard_ratio": float(row.hazard_ratio), "ci_low": float(row.ci_low), "ci_high": float(row.ci_high)}


def one_seed(seed: int, patients: int, workroot: Path) -> dict:
    import dagster as dg
    import duckdb
    import pandas as pd

    from pipelines.definitions import build_definitions
    from pipelines.resources import build_resources

    started = time.monotonic()
    workdir = workroot / f"seed_{seed}"
    settings, partition, truth, build = build_through_cohort(workdir, patients, seed, progress=lambda m: None)
    defs = build_definitions(build_resources(settings))
    run_group(defs, dg.DagsterInstance.ephemeral(), partition, "models", FRACTURE_KEYS)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        cox = con.execute("SELECT model, term, log_hr, hazard_ratio, ci_low, ci_high, estimable, n_events, "
                          "n_events_exposed, diagnostics_passed FROM results.fracture_cox").df()
        balance = con.execute("SELECT covariate, smd_before, smd_after FROM results.balance").df()
        ps = con.execute("SELECT c_statistic, equipoise, balance_passed FROM results.propensity_diagnostics").df()
    planted = truth["fracture_model"]["log_hr"]
    terms = {}
    for row in cox[cox.model == "time_varying_adjusted"].itertuples():
        if row.term not in planted:
            continue
        entry = {"planted_log_hr": planted[row.term], "estimable": bool(row.estimable),
                 "events_exposed": None if pd.isna(row.n_events_exposed) else int(row.n_events_exposed)}
        if row.estimable:
            entry.update(log_hr=float(row.log_hr), ci_low=float(row.ci_low), ci_high=float(row.ci_high),
                         covered=bool(row.ci_low <= math.exp(planted[row.term]) <= row.ci_high))
        terms[row.term] = entry
    itt = {m: float(cox[(cox.model == m) & (cox.term == "ai_ever")].hazard_ratio.iloc[0])
           for m in ("crude_itt", "iptw_itt") if ((cox.model == m) & (cox.term == "ai_ever")).any()}
    death_age = cox[(cox.model == "death_cause_specific") & (cox.term == "age_per_10y")].iloc[0]
    record = {
        "seed": seed,
        "fractures": int(cox[cox.model == "time_varying_adjusted"].n_events.iloc[0]),
        "terms": terms,
        "itt_hazard_ratio": {**itt, "adjusted_itt": adjusted_itt(settings)},
        "death_age_per_10y": {"planted": truth["death_model"]["hazard_ratio_per_10y"],
                              "estimate": float(death_age.hazard_ratio),
                              "covered": bool(death_age.ci_low <= truth["death_model"]["hazard_ratio_per_10y"]
                                              <= death_age.ci_high)},
        "max_abs_smd_before": float(balance.smd_before.abs().max()),
        "max_abs_smd_after": float(balance.smd_after.abs().max()),
        "ps_c_statistic": float(ps.c_statistic.iloc[0]),
        "ps_equipoise": float(ps.equipoise.iloc[0]),
        "build_seconds": build,
        "seconds": round(time.monotonic() - started, 1),
    }
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        record["members"] = con.execute("SELECT count(*) FROM cohort.members").fetchone()[0]
    return record


def summarize(records: list[dict]) -> dict:
    summary = {}
    all_terms = sorted({t for r in records for t in r["terms"]})
    for term in all_terms:
        fits = [r["terms"][term] for r in records if r["terms"].get(term, {}).get("estimable")]
        if not fits:
            summary[term] = {"estimable_in": 0}
            continue
        est = np.array([f["log_hr"] for f in fits])
        planted = fits[0]["planted_log_hr"]
        summary[term] = {
            "planted_hr": round(math.exp(planted), 4),
            "estimable_in": len(fits),
            "covered_in": int(sum(f["covered"] for f in fits)),
            "coverage": round(float(np.mean([f["covered"] for f in fits])), 3),
            "mean_hr": round(float(np.exp(est.mean())), 4),
            "mean_log_hr_bias": round(float(est.mean() - planted), 4),
            "sd_log_hr": round(float(est.std(ddof=1)), 4) if len(est) > 1 else None,
        }
    covered = [f["covered"] for r in records for f in r["terms"].values() if f.get("estimable")]
    itt = {}
    for model in ("crude_itt", "iptw_itt"):
        values = [r["itt_hazard_ratio"][model] for r in records if model in r["itt_hazard_ratio"]]
        if values:
            itt[model] = round(float(np.exp(np.mean(np.log(values)))), 4)
    adjusted = [r["itt_hazard_ratio"]["adjusted_itt"]["hazard_ratio"] for r in records
                if r["itt_hazard_ratio"]["adjusted_itt"].get("hazard_ratio")]
    if adjusted:
        itt["adjusted_itt"] = round(float(np.exp(np.mean(np.log(adjusted)))), 4)
    return {
        "seeds": len(records),
        "coverage_all_terms": round(float(np.mean(covered)), 3) if covered else None,
        "intervals_checked": len(covered),
        "seeds_with_every_estimable_term_covered": sum(
            all(f["covered"] for f in r["terms"].values() if f.get("estimable")) for r in records),
        "by_term": summary,
        "death_age_coverage": round(float(np.mean([r["death_age_per_10y"]["covered"] for r in records])), 3),
        "itt_geometric_mean_hr": itt,
        "mean_max_abs_smd_before": round(float(np.mean([r["max_abs_smd_before"] for r in records])), 3),
        "mean_max_abs_smd_after": round(float(np.mean([r["max_abs_smd_after"] for r in records])), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep each seed's deliveries and warehouse")
    parser.add_argument("--out", type=Path, default=OUT / "coverage_fracture.json")
    args = parser.parse_args()

    workroot = OUT / "coverage_fracture_work"
    records = []
    if args.out.exists():  # resume: seeds already done with the same size are kept
        previous = json.loads(args.out.read_text())
        if previous.get("patients") == args.patients:
            records = [r for r in previous.get("records", []) if r["seed"] >= args.first_seed]
    done = {r["seed"] for r in records}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if seed in done:
            continue
        say(f"seed {seed}: {args.patients:,} patients")
        record = one_seed(seed, args.patients, workroot)
        records.append(record)
        if not args.keep:
            shutil.rmtree(workroot / f"seed_{seed}", ignore_errors=True)
        missed = [t for t, f in record["terms"].items() if f.get("estimable") and not f["covered"]]
        say(f"seed {seed}: {record['fractures']} fractures, {record['seconds']} s, outside the CI: {missed or 'none'}")
        result = {"tool": "bench/coverage_fracture.py", "patients": args.patients, "model": "time_varying_adjusted",
                  "summary": summarize(records), "records": sorted(records, key=lambda r: r["seed"])}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summarize(records), indent=2))


if __name__ == "__main__":
    main()
