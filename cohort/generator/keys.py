"""Opaque, stable patient keys.

A key is "P" + 11 Crockford base-32 characters (12 characters, so polars
stores it inline without a heap buffer). It encodes a 55-bit bijective mix of
(site, patient index) under the seed: keys are stable across snapshots, never
collide, and reveal nothing about the index. Indexes from ORPHAN_BASE upward
are reserved for injected rows whose key must not exist in the patients table.
"""

from __future__ import annotations

import numpy as np
import polars as pl

_BITS = 55
_MASK = np.uint64((1 << _BITS) - 1)
_ALPHABET = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)
_INDEX_BITS = 36
ORPHAN_BASE = 1 << 35            # real patient indexes stay far below this


def _mix(x: np.ndarray, seed: int) -> np.ndarray:
    """Bijection on 55-bit integers: xor with a seed word, then odd multiplies and xor-shifts mod 2**55."""
    seed_word = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 64)) & _MASK
    x = (x ^ seed_word) & _MASK
    with np.errstate(over="ignore"):
        x = (x * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x ^= x >> np.uint64(27)
        x = (x * np.uint64(0x94D049BB133111EB)) & _MASK
        x ^= x >> np.uint64(31)
    return x


def patient_keys(seed: int, site: int, index: np.ndarray) -> pl.Series:
    """Keys for patient indexes of one site (vectorized)."""
    x = (np.uint64(site) << np.uint64(_INDEX_BITS)) | index.astype(np.uint64)
    x = _mix(x, seed)
    chars = np.empty((len(x), 12), dtype=np.uint8)
    chars[:, 0] = ord("P")
    for i in range(11):
        chars[:, 11 - i] = _ALPHABET[((x >> np.uint64(5 * i)) & np.uint64(31)).astype(np.int64)]
    return pl.Series("patient_key", chars.view("S12").ravel()).cast(pl.String)
