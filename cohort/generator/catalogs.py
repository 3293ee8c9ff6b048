"""Source vocabularies: drug names and codes, lab variants, ICD-10-CM codes, scanners, site habits.

Rows in the simulated tables hold small integer ids into these catalogs; the
strings are gathered only when a snapshot is written, which keeps the 1M-patient
simulation in compact numpy arrays.

Codes: RxNorm is used only where it is certain (anastrozole 84857 and letrozole
72965 from the contract, the testosterone ingredient 10379, prednisone 8640);
every other ingredient carries its ATC code only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

# ---------------------------------------------------------------- medications


@dataclass(frozen=True)
class Product:
    key: str
    group: str            # trt | ai | glucocorticoid | bisphosphonate | denosumab | other
    ingredient: str
    names: tuple[tuple[str, float], ...]   # (drug_name as written at the source, weight)
    rxnorm: str | None
    atc: str | None
    route: str
    doses_mg: tuple[float, ...]
    doses_per_week: tuple[float, ...]
    days_supply: tuple[tuple[int, float], ...]


PRODUCTS: tuple[Product, ...] = (
    Product("testosterone_cypionate", "trt", "testosterone",
            (("TESTOSTERONE CYPIONATE 200 MG/ML INJ", 6), ("TESTOSTERONE CYPIONATE 200 MG/ML IM SOLN", 2),
             ("Testosterone Cypionate 200mg/mL", 1), ("DEPO-TESTOSTERONE (TESTOSTERONE CYPIONATE) 200 MG/ML INJ", 1),
             ("TESTOSTERONE CYPIONATE 200 MG/ML INJ\n(MULTI-DOSE VIAL)", 0.02)),
            "10379", "G03BA03", "intramuscular", (100.0, 140.0, 160.0, 200.0), (0.5, 1.0),
            ((28, 1), (30, 1), (84, 2), (90, 6))),
    Product("testosterone_enanthate_im", "trt", "testosterone",
            (("TESTOSTERONE ENANTHATE 200 MG/ML INJ", 3), ("Testosterone Enanthate 200 mg/mL vial", 1)),
            "10379", "G03BA03", "intramuscular", (100.0, 200.0), (0.5, 1.0), ((28, 1), (84, 1))),
    Product("testosterone_enanthate_sc", "trt", "testosterone",
            (("XYOSTED (TESTOSTERONE ENANTHATE) 75 MG/0.5 ML AUTOINJECTOR", 1),),
            "10379", "G03BA03", "subcutaneous", (50.0, 75.0, 100.0), (1.0,), ((28, 1),)),
    Product("testosterone_gel", "trt", "testosterone",
            (("TESTOSTERONE 1.62% GEL PUMP", 3), ("ANDROGEL 1.62% (TESTOSTERONE) GEL", 2),
             ("Testosterone 1% gel 50mg/5g", 1)),
            "10379", "G03BA03", "transdermal", (40.5, 50.0, 81.0), (7.0,), ((30, 1), (90, 2))),
    Product("testosterone_undecanoate_im", "trt", "testosterone",
            (("TESTOSTERONE UNDECANOATE 750 MG/3 ML INJ", 1),),
            "10379", "G03BA03", "intramuscular", (750.0,), (0.1,), ((70, 1),)),
    Product("testosterone_undecanoate_oral", "trt", "testosterone",
            (("TESTOSTERONE UNDECANOATE 158 MG CAPSULE", 1), ("JATENZO (TESTOSTERONE UNDECANOATE) 158 MG CAP", 1)),
            "10379", "G03BA03", "oral", (316.0,), (14.0,), ((30, 1), (90, 1))),
    Product("anastrozole", "ai", "anastrozole",
            (("ANASTROZOLE 1 MG TABLET", 6), ("ANASTROZOLE 1 MG TABLET, FILM COATED", 2),
             ("Anastrozole 1mg tab", 1), ("ARIMIDEX (ANASTROZOLE) 1 MG TABLET", 1)),
            "84857", "L02BG03", "oral", (1.0, 0.5), (2.0, 3.0, 7.0), ((30, 1), (90, 1))),
    Product("letrozole", "ai", "letrozole",
            (("LETROZOLE 2.5 MG TABLET", 4), ("Letrozole 2.5mg tab", 1), ("FEMARA (LETROZOLE) 2.5 MG TABLET", 1)),
            "72965", "L02BG04", "oral", (2.5,), (1.0, 2.0, 7.0), ((30, 1), (90, 1))),
    Product("exemestane", "ai", "exemestane",
            (("EXEMESTANE 25 MG TABLET", 3), ("AROMASIN (EXEMESTANE) 25 MG TABLET", 1)),
            None, "L02BG06", "oral", (25.0, 12.5), (2.0, 3.5, 7.0), ((30, 1), (90, 1))),
    Product("prednisone", "glucocorticoid", "prednisone",
            (("PREDNISONE 10 MG TABLET", 3), ("PREDNISONE 20 MG TAB", 2), ("predniSONE 5 mg tablet", 1)),
            "8640", "H02AB07", "oral", (5.0, 10.0, 20.0, 40.0), (7.0,), ((5, 3), (7, 2), (10, 2), (14, 1), (21, 1))),
    Product("methylprednisolone", "glucocorticoid", "methylprednisolone",
            (("METHYLPREDNISOLONE 4 MG TABLET DOSE PACK", 1),),
            None, "H02AB04", "oral", (4.0,), (7.0,), ((6, 1),)),
    Product("dexamethasone", "glucocorticoid", "dexamethasone",
            (("DEXAMETHASONE 4 MG TABLET", 1),),
            None, "H02AB02", "oral", (4.0, 6.0), (7.0,), ((3, 1), (5, 1))),
    Product("alendronate", "bisphosphonate", "alendronic acid",
            (("ALENDRONATE SODIUM 70 MG TABLET", 3), ("Alendronate 70mg tab", 1)),
            None, "M05BA04", "oral", (70.0,), (1.0,), ((28, 1), (84, 1))),
    Product("zoledronic_acid", "bisphosphonate", "zoledronic acid",
            (("ZOLEDRONIC ACID 5 MG/100 ML IV SOLUTION", 1),),
            None, "M05BA08", "intravenous", (5.0,), (0.02,), ((365, 1),)),
    Product("denosumab", "denosumab", "denosumab",
            (("PROLIA (DENOSUMAB) 60 MG/ML SYRINGE", 1),),
            None, "M05BX04", "subcutaneous", (60.0,), (0.04,), ((182, 1),)),
    Product("atorvastatin", "other", "atorvastatin",
            (("ATORVASTATIN 40 MG TABLET", 2), ("ATORVASTATIN CALCIUM 40 MG TAB", 1)),
            None, "C10AA05", "oral", (40.0,), (7.0,), ((30, 1), (90, 2))),
    Product("lisinopril", "other", "lisinopril",
            (("LISINOPRIL 10 MG TABLET", 1),), None, "C09AA03", "oral", (10.0,), (7.0,), ((90, 1),)),
    Product("fluticasone_nasal", "other", "fluticasone",   # nasal steroid: NOT a systemic glucocorticoid
            (("FLUTICASONE PROPIONATE 50 MCG/ACT NASAL SPRAY", 1),),
            None, "R01AD08", "nasal", (0.1,), (14.0,), ((30, 1),)),
)
PRODUCT_ID = {p.key: i for i, p in enumerate(PRODUCTS)}


def in_group(products: np.ndarray, group: str) -> np.ndarray:
    """Which rows' product ids belong to a drug group (trt, ai, glucocorticoid, ...)."""
    return np.array([p.group == group for p in PRODUCTS])[products]
TRT_PRODUCT_MIX = {"testosterone_cypionate": 0.55, "testosterone_enanthate_im": 0.10,
                   "testosterone_enanthate_sc": 0.05, "testosterone_gel": 0.22,
                   "testosterone_undecanoate_im": 0.04, "testosterone_undecanoate_oral": 0.04}
AI_PRODUCT_MIX = {"anastrozole": 0.70, "letrozole": 0.20, "exemestane": 0.10}

# Which codes a dispensing row carries (source systems differ): both, RxNorm only, ATC only, name only.
CODE_BOTH, CODE_RXNORM_ONLY, CODE_ATC_ONLY, CODE_NAME_ONLY = range(4)
CODE_VARIANT_MIX = (0.80, 0.05, 0.08, 0.07)


def name_table() -> pl.DataFrame:
    """One row per (product, drug_name variant): the strings a dispensing row can carry."""
    rows = []
    for pid, p in enumerate(PRODUCTS):
        for name, _ in p.names:
            rows.append(dict(product=pid, drug_name=name, rxnorm_code=p.rxnorm, atc_code=p.atc, route=p.route))
    return pl.DataFrame(rows, schema={"product": pl.Int32, "drug_name": pl.String, "rxnorm_code": pl.String,
                                      "atc_code": pl.String, "route": pl.String})


def name_choice(rng: np.random.Generator, products: np.ndarray) -> np.ndarray:
    """Draw a drug_name variant (row of name_table) for each product id, by the variants' weights."""
    offsets = np.cumsum([0] + [len(p.names) for p in PRODUCTS])
    out = np.empty(len(products), dtype=np.int32)
    u = rng.random(len(products))
    for pid, p in enumerate(PRODUCTS):
        sel = products == pid
        if sel.any():
            w = np.cumsum([wt for _, wt in p.names])
            out[sel] = offsets[pid] + np.searchsorted(w / w[-1], u[sel], side="right")
    return out


def product_attribute_draw(rng: np.random.Generator, products: np.ndarray, attr: str) -> np.ndarray:
    """Per row, a value drawn from the product's `doses_mg` / `doses_per_week` / `days_supply` options."""
    out = np.empty(len(products), dtype=np.float64)
    u = rng.random(len(products))
    for pid, p in enumerate(PRODUCTS):
        sel = products == pid
        if not sel.any():
            continue
        opts = getattr(p, attr)
        if attr == "days_supply":
            vals = np.array([v for v, _ in opts], dtype=np.float64)
            w = np.cumsum([wt for _, wt in opts], dtype=np.float64)
        else:
            vals = np.array(opts, dtype=np.float64)
            w = np.arange(1, len(opts) + 1, dtype=np.float64)
        out[sel] = vals[np.minimum(np.searchsorted(w / w[-1], u[sel], side="right"), len(vals) - 1)]
    return out


# ---------------------------------------------------------------- labs

ANALYTES = ("estradiol", "testosterone", "vitamin_d", "cholesterol", "hdl", "ldl", "triglycerides", "bmi")
(A_E2, A_T, A_VITD, A_CHOL, A_HDL, A_LDL, A_TG, A_BMI) = range(len(ANALYTES))

# Lab systems a patient's results come from (one per patient, mixed per site).
LAB_SYSTEMS = ("lcms_pg_loq2", "lcms_pg_loq5", "lcms_molar", "immunoassay")


@dataclass(frozen=True)
class LabVariant:
    analyte: int
    system: int
    loinc: str | None
    test_name: str
    unit: str
    assay: str | None
    factor: float          # reported value = canonical value x factor
    decimals: int
    loq: float | None      # lower limit of quantitation, reported unit
    uloq: float | None     # upper limit: results above are reported ">uloq"
    below_token: str | None
    above_token: str | None
    flags: bool            # the lab appends H/L to out-of-range values


def _variants() -> list[LabVariant]:
    out: list[LabVariant] = []

    def add(analyte, systems, loincs, names, units, assay, factor, decimals, loq=None, uloq=None,
            below=None, above=None, flags=False):
        for s in systems:
            for loinc in loincs:
                for name in names:
                    for unit in units:
                        out.append(LabVariant(analyte, s, loinc, name, unit, assay, factor, decimals,
                                              loq, uloq, below, above, flags))

    mass_pg = ["pg/mL"] * 4 + ["pg/ml", "PG/ML"]
    add(A_E2, [0], ["2243-4"], ["ESTRADIOL", "ESTRADIOL, ULTRASENSITIVE LC/MS"], mass_pg, "LC-MS/MS",
        1.0, 1, loq=2.0, below="<2.0")
    add(A_E2, [1], ["2243-4"], ["Estradiol, LC/MS/MS"], mass_pg, "LC-MS/MS", 1.0, 1, loq=5.0, below="<5",
        flags=True)
    add(A_E2, [2], ["14715-7"], ["OESTRADIOL", "ESTRADIOL"], ["pmol/L"] * 3 + ["pmol/l"], "LC-MS/MS",
        3.671, 1, loq=18.4, below="<18.4")
    add(A_E2, [3], ["2243-4"], ["ESTRADIOL (E2), SERUM"], mass_pg, "immunoassay", 1.0, 1, loq=20.0,
        below="<20", flags=True)
    ng_dl = ["ng/dL"] * 4 + ["ng/dl", "NG/DL"]
    add(A_T, [0, 1], ["2986-8"], ["TESTOSTERONE, TOTAL", "TESTOSTERONE TOTAL, MS"], ng_dl, "LC-MS/MS",
        1.0, 0, loq=7.0, uloq=1500.0, below="<7", above=">1500", flags=True)
    add(A_T, [2], ["14913-8"], ["TESTOSTERONE"], ["nmol/L"] * 3 + ["nmol/l"], "LC-MS/MS",
        1 / 28.84, 2, loq=0.24, uloq=52.0, below="<0.24", above=">52.0")
    add(A_T, [3], ["2986-8"], ["Testosterone, Total, Serum"], ng_dl, "immunoassay",
        1.0, 0, loq=20.0, uloq=1500.0, below="<20", above=">1500", flags=True)
    add(A_VITD, [0, 1, 3], ["62292-8", "1989-3"], ["VITAMIN D, 25-HYDROXY", "25-OH VITAMIN D TOTAL"],
        ["ng/mL"] * 3 + ["ng/ml"], None, 1.0, 1, loq=4.0, below="<4.0")
    add(A_VITD, [2], ["14635-7"], ["25-OH VITAMIN D"], ["nmol/L"], None, 2.496, 1, loq=10.0, below="<10")
    lipid_names = {A_CHOL: ("2093-3", "CHOLESTEROL, TOTAL", 38.67), A_HDL: ("2085-9", "HDL CHOLESTEROL", 38.67),
                   A_LDL: ("13457-7", "LDL CHOLESTEROL (CALC)", 38.67), A_TG: ("2571-8", "TRIGLYCERIDES", 88.57)}
    for analyte, (loinc, name, per_mmol) in lipid_names.items():
        add(analyte, [0, 1, 3], [loinc] * 19 + [None], [name], ["mg/dL"] * 3 + ["mg/dl"], None, 1.0, 0)
        add(analyte, [2], [loinc], [name], ["mmol/L"], None, 1 / per_mmol, 2)
    add(A_BMI, [0, 1, 2, 3], ["39156-5"], ["BODY MASS INDEX", "BMI"], ["kg/m2"] * 5 + ["KG/M2"], None, 1.0, 1)
    return out


LAB_VARIANTS: tuple[LabVariant, ...] = tuple(_variants())

# Units a pipeline must know, per analyte (lower-cased); anything else is an unknown unit.
KNOWN_UNITS = {
    "estradiol": ["pg/ml", "pmol/l"], "testosterone": ["ng/dl", "nmol/l"], "vitamin_d": ["ng/ml", "nmol/l"],
    "cholesterol": ["mg/dl", "mmol/l"], "hdl": ["mg/dl", "mmol/l"], "ldl": ["mg/dl", "mmol/l"],
    "triglycerides": ["mg/dl", "mmol/l"], "bmi": ["kg/m2"],
}
UNKNOWN_UNITS = ("mIU/mL", "U/L", "mg")       # used only by injected defects
NON_NUMERIC_RESULTS = ("HEMOLYZED", "QNS", "CANCELLED")


def lab_variant_index() -> tuple[np.ndarray, np.ndarray]:
    """(start, count) arrays indexed [analyte, system] into LAB_VARIANTS (variants are grouped)."""
    start = np.zeros((len(ANALYTES), len(LAB_SYSTEMS)), dtype=np.int64)
    count = np.zeros_like(start)
    for i, v in enumerate(LAB_VARIANTS):
        if count[v.analyte, v.system] == 0:
            start[v.analyte, v.system] = i
        count[v.analyte, v.system] += 1
    return start, count


def lab_variant_table() -> pl.DataFrame:
    return pl.DataFrame(
        [dict(loinc_code=v.loinc, test_name=v.test_name, unit=v.unit, assay_method=v.assay, loq=v.loq,
              below_token=v.below_token, above_token=v.above_token) for v in LAB_VARIANTS],
        schema={"loinc_code": pl.String, "test_name": pl.String, "unit": pl.String, "assay_method": pl.String,
                "loq": pl.Float64, "below_token": pl.String, "above_token": pl.String})


def lab_variant_arrays() -> dict[str, np.ndarray]:
    """Numeric attributes of LAB_VARIANTS as arrays (NaN where absent)."""
    def arr(attr):
        return np.array([np.nan if getattr(v, attr) is None else float(getattr(v, attr)) for v in LAB_VARIANTS])
    decimals = np.array([v.decimals for v in LAB_VARIANTS])
    return dict(analyte=np.array([v.analyte for v in LAB_VARIANTS]), factor=arr("factor"), decimals=decimals,
                scale=10.0 ** decimals, loq=arr("loq"), uloq=arr("uloq"), flags=np.array([v.flags for v in LAB_VARIANTS]))


# ---------------------------------------------------------------- diagnoses

# Fracture codes as (code without 7th character); the 7th character is added per row.
FRACTURE_BASES = {
    "hip": ("S72.001", "S72.002", "S72.011", "S72.012", "S72.141", "S72.142", "S72.21X", "S72.22X"),
    "vertebral": ("S32.010", "S32.020", "S22.000", "S22.060", "M48.50X", "M80.08X"),
    "distal_forearm": ("S52.501", "S52.502", "S52.531", "S52.532", "S52.601", "S52.602"),
    "proximal_humerus": ("S42.201", "S42.202", "S42.211", "S42.212"),
    "osteoporotic_m80": ("M80.00X", "M80.051", "M80.052"),
}
FOLLOW_UP_CHARS = (("D", 0.70), ("G", 0.12), ("K", 0.06), ("P", 0.04), ("S", 0.08))
PATHOLOGICAL_BASES = ("M84.50X", "M84.58X")
METASTASIS_CODE = "C79.51"
# Background diagnoses: (code, share of patients).
NOISE_DIAGNOSES = (("E29.1", 0.75), ("I10", 0.35), ("E78.5", 0.30), ("E11.9", 0.12), ("N52.9", 0.15),
                   ("M81.0", 0.03), ("M85.80", 0.05), ("E66.9", 0.0))   # E66.9 driven by BMI
ENCOUNTERS = ("inpatient", "outpatient", "emergency")
ENC_INPATIENT, ENC_OUTPATIENT, ENC_EMERGENCY = range(3)


def diagnosis_codes() -> list[str]:
    """Every dotted code the generator can emit (ids index this list)."""
    codes = []
    for bases in FRACTURE_BASES.values():
        for b in bases:
            codes += [b + c for c in "AB"] + [b + c for c, _ in FOLLOW_UP_CHARS]
    for b in PATHOLOGICAL_BASES:
        codes += [b + "A", b + "D"]
    codes.append(METASTASIS_CODE)
    codes += [c for c, _ in NOISE_DIAGNOSES]
    return sorted(set(codes))


# ---------------------------------------------------------------- DXA and sites

SCANNERS = (("Hologic", "Horizon A"), ("Hologic", "Discovery W"), ("Hologic", "QDR 4500"),
            ("GE Lunar", "Prodigy"), ("GE Lunar", "iDXA"), ("Norland", "XR-800"))
NORLAND = 5
MANUFACTURERS = ("Hologic", "GE Lunar", "Norland")
HOLOGIC, GE_LUNAR, NORLAND_MAKER = range(3)   # indexes into MANUFACTURERS
SCANNER_MANUFACTURER = np.array([MANUFACTURERS.index(m) for m, _ in SCANNERS], dtype=np.int8)
DXA_SITES = ("lumbar_spine", "femoral_neck", "total_hip", "radius_33")
# Young-adult male reference (mean, SD) per manufacturer and skeletal site, for T-scores.
YOUNG_REFERENCE = {
    "Hologic": {"lumbar_spine": (1.05, 0.11), "femoral_neck": (0.93, 0.14), "total_hip": (1.04, 0.14),
                "radius_33": (0.85, 0.07)},
    "GE Lunar": {"lumbar_spine": (1.20, 0.12), "femoral_neck": (1.05, 0.14), "total_hip": (1.08, 0.15),
                 "radius_33": (0.90, 0.07)},
    "Norland": {"lumbar_spine": (1.00, 0.11), "femoral_neck": (0.90, 0.13), "total_hip": (0.98, 0.14),
                "radius_33": (0.80, 0.07)},
}

RACES = ("White", "Black or African American", "Asian", "American Indian or Alaska Native",
         "Native Hawaiian or Other Pacific Islander", "More than one race", None)
RACE_MIX = (0.70, 0.13, 0.05, 0.01, 0.003, 0.02, 0.087)
ETHNICITIES = ("Not Hispanic or Latino", "Hispanic or Latino", None)
ETHNICITY_MIX = (0.80, 0.12, 0.08)


@dataclass(frozen=True)
class SiteProfile:
    """A source site's habits: which labs and scanners it uses and how it writes files."""
    lab_system_mix: tuple[float, float, float, float]
    scanner_mix: tuple[float, ...]          # over SCANNERS[:5]; Norland is an occasional override
    undotted_icd_share: float
    line_terminator: str
    bom: bool


SITE_PROFILES = (
    SiteProfile((0.55, 0.25, 0.08, 0.12), (0.55, 0.20, 0.0, 0.0, 0.25), 0.10, "\n", False),
    SiteProfile((0.10, 0.0, 0.90, 0.0), (0.0, 0.0, 0.0, 0.60, 0.40), 1.00, "\r\n", False),
    SiteProfile((0.0, 0.30, 0.0, 0.70), (0.0, 0.50, 0.50, 0.0, 0.0), 0.0, "\n", True),
    SiteProfile((0.30, 0.50, 0.20, 0.0), (0.40, 0.0, 0.0, 0.30, 0.30), 0.30, "\r\n", True),
)


def site_profile(site: int) -> SiteProfile:
    """Profile of site number `site` (1-based); profiles repeat after the fourth site."""
    return SITE_PROFILES[(site - 1) % len(SITE_PROFILES)]
