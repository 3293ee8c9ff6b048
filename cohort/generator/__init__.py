"""Synthetic data deliveries with planted truth (see generate()).

Layout written under out_dir:

    <source_site>_<yyyy>q<n>/manifest.json + patients|medications|labs|dxa|diagnoses.<fmt>
    truth.json

Modules: population / medications / labs / dxa / outcomes simulate one site's
world (world.py orders them); intervals.py is the daily exposure grid;
render.py turns a world into the contract tables of one snapshot;
defects.py injects counted defects; output.py writes files and manifests;
truth.py assembles truth.json; params.py holds every planted effect.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np

from . import catalogs as cat
from ._common import day_number, quarter_ends, rng_for
from .defects import TABLES, empty_counts, inject
from .keys import ORPHAN_BASE, patient_keys
from .output import FORMATS, sha256_file, write_manifest, write_table
from .render import Snapshot
from .truth import build_truth
from .world import World, simulate_site

__all__ = ["generate"]


def generate(out_dir: Path, patients: int = 2000, sites: int = 1, quarters: int = 1, seed: int = 0,
             fmt: str = "csv",
             defects: float = 0.0,
             last_cutoff: date = date(2025, 6, 30),
             progress: Callable[[str], None] | None = None,
             ) -> dict:
    """Write `sites` x `quarters` full-snapshot deliveries and truth.json; return the truth dict.

    patients: total across sites (split evenly). quarters: consecutive quarterly
    snapshots per site ending at last_cutoff (a quarter end). defects: per-row
    rate of injected defective rows (0 = clean). Same arguments => byte-identical files.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if patients < sites or sites < 1 or quarters < 1:
        raise ValueError("need sites >= 1, quarters >= 1 and at least one patient per site")
    if not 0.0 <= defects < 0.5:
        raise ValueError("defects is a per-row rate in [0, 0.5)")
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cutoffs = quarter_ends(last_cutoff, quarters)
    sizes = [patients // sites + (1 if i < patients % sites else 0) for i in range(sites)]

    deliveries: dict[str, dict] = {}
    site_stats = []
    for site, n in enumerate(sizes, start=1):
        world = simulate_site(n, site, seed, day_number(last_cutoff), say)
        for q, cutoff in enumerate(cutoffs):
            delivery_id, info = _write_delivery(world, cutoff, q, q == len(cutoffs) - 1, out_dir, fmt, defects, say)
            deliveries[delivery_id] = info
        site_stats.append(world.stats)
        del world

    config = dict(seed=seed, patients=patients, sites=sites, quarters=quarters, format=fmt, defects_rate=defects,
                  last_cutoff=last_cutoff.isoformat(), patients_per_site={f"site{i:02d}": n for i, n in
                                                                          enumerate(sizes, start=1)},
                  data_cutoffs=[c.isoformat() for c in cutoffs])
    truth = build_truth(config, deliveries, site_stats)
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {len(deliveries)} deliveries and truth.json to {out_dir}")
    return truth


def _write_delivery(world: World, cutoff: date, q: int, final: bool, out_dir: Path, fmt: str, rate: float,
                    say: Callable[[str], None]) -> tuple[str, dict]:
    """Render, corrupt (if asked) and write one delivery; return its id and truth entry."""
    source_site = f"site{world.site:02d}"
    delivery_id = f"{source_site}_{cutoff.year}q{(cutoff.month - 1) // 3 + 1}"
    folder = out_dir / delivery_id
    if folder.exists():
        shutil.rmtree(folder)           # a stale file would make the delivery disagree with its manifest
    folder.mkdir(parents=True)
    snap = Snapshot(world, cutoff, q, final)
    rng = rng_for(world.seed, world.site, "defects", q)
    next_fresh = [ORPHAN_BASE + (q << 24)]

    def fresh_keys(k: int):
        start = next_fresh[0]
        next_fresh[0] += k
        return patient_keys(world.seed, world.site, np.arange(start, start + k))

    files, digests, defect_counts = {}, {}, empty_counts()
    profile = cat.site_profile(world.site)
    with ThreadPoolExecutor(max_workers=1) as hasher:     # checksum a file while the next table renders
        for table in TABLES:
            frame = getattr(snap, table)()
            if rate > 0:
                frame, counts = inject(table, frame, rate, cutoff, rng, fresh_keys)
                for kind, n in counts.items():
                    defect_counts[kind][table] = n
            path, rows = write_table(frame, folder, table, fmt, profile)
            del frame
            files[path.name] = {"rows": rows}
            digests[path.name] = hasher.submit(sha256_file, path)
            say(f"{delivery_id}: wrote {path.name} ({rows:,} rows)")
        for name, digest in digests.items():
            files[name]["sha256"] = digest.result()
    manifest = write_manifest(folder, delivery_id, source_site, cutoff, world.site, files)
    info = dict(source_site=source_site, data_cutoff=cutoff.isoformat(), extracted_at=manifest["extracted_at"],
                snapshot=q + 1, is_current=final, files=files, defects=defect_counts,
                corrections=snap.corrections, realism=snap.realism)
    return delivery_id, info
