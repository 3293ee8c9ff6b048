"""Small-cell suppression with complementary suppression, as pure functions (no I/O).

Every count the report shows goes through a `Ledger`: the report registers each count under a key
(the same quantity shown in two places gets one key, or an `equal` relation), states the exact
linear relations a reader knows between them (a total is the sum of its parts: table margins, the
steps of the cohort flow, the groups of the cohort), then `solve()` decides which cells to hide.

The algorithm
-------------
1. Primary suppression: every count with 0 < n < threshold (1..10 for threshold 11) is hidden and
   shown as "<threshold". Zero is shown: there is no one to protect.
2. A hidden cell is *derivable* when the published cells and the relations determine its value
   exactly. With the relations written as A x = 0 (one row per relation, coefficients +1 for parts
   and -1 for the total), a reader who knows the published cells P solves A_S x_S = -A_P x_P for the
   hidden cells S. Cell j in S is fixed by that system exactly when every vector of the null space
   of A_S is zero at j (e_j lies in the row space of A_S). The null space comes from an SVD of A_S.
   For a two-way table with margins this is the classic rule "no hidden cell alone in a row or
   column, and no hidden cell a bridge between cycles of hidden cells", but the test is general:
   chains (the cohort flow: remaining = next remaining + excluded), several tables sharing a total,
   and equalities between the same count shown twice are handled the same way.
3. Complementary suppression: while some hidden cell is derivable, take the first one and hide
   the cheapest set of published cells that frees it. A hidden cell is free exactly when some
   vector v with A v = 0 is non-zero at it and zero on every published cell, so the cheapest set
   is the support of the solution of the linear programme
       minimize  sum over published cells c of cost_c * |v_c|
       subject to  A v = 0,  v_cell = 1,  v_c = 0 for locked cells,
   (HiGHS via scipy). Its optimal vertex is sparse: in a two-way table it is the cheapest
   rectangle (or longer alternating cycle) through the cell, in the cohort flow the neighbouring
   step. cost_c is the count itself (hide small numbers rather than large ones, interior cells
   rather than totals); a zero is a poor complement (hiding it tells the reader little he does
   not know), so it costs more than any count. Hiding cells never makes a free cell derivable
   again (the null space only grows), so the loop ends; it raises SuppressionError when only
   locked cells could protect a count.
   Then the set is made irreducible: each complementary cell, largest first, is shown again if
   nothing becomes derivable without it. Finding the minimum set is NP-hard in general; this
   greedy answer is minimal in the common cases and always safe (step 2 is re-checked exactly).
4. Complementary cells are shown as "hidden" (not "<threshold", which would be false).

What it does not do: it protects against exact derivation, not against bounds a reader can still
infer (e.g. a hidden cell lies between 0 and a published total), and not against differencing two
reports of different quarters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

import numpy as np

PRIMARY = "primary"
COMPLEMENTARY = "complementary"
SHOWN = "shown"
HIDDEN_TEXT = "hidden"


class SuppressionError(RuntimeError):
    """No complementary cell could protect a small count (every candidate is locked)."""


def is_small(n: int, threshold: int) -> bool:
    """A count that must not be shown: 1..threshold-1."""
    return 0 < int(n) < threshold


def small_text(threshold: int) -> str:
    return f"<{threshold}"


def format_count(n: int, status: str, threshold: int) -> str:
    """The text a reader sees for a count with its suppression status."""
    if status == PRIMARY:
        return small_text(threshold)
    if status == COMPLEMENTARY:
        return HIDDEN_TEXT
    return f"{int(n):,}"


def _null_space(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal basis (rows) of the null space of `matrix`."""
    if matrix.shape[1] == 0:
        return np.zeros((0, 0))
    if matrix.shape[0] == 0:
        return np.eye(matrix.shape[1])
    _, singular, vt = np.linalg.svd(matrix, full_matrices=True)
    tolerance = max(matrix.shape) * np.finfo(float).eps * (singular.max() if singular.size else 0.0)
    rank = int((singular > max(tolerance, 1e-10)).sum())
    return vt[rank:]


def derivable(n_cells: int, relations: Sequence[dict[int, float]], hidden: Iterable[int]) -> set[int]:
    """The hidden cells whose value follows exactly from the published cells and the relations."""
    hidden = sorted(set(hidden))
    if not hidden:
        return set()
    column = {cell: j for j, cell in enumerate(hidden)}
    rows = [r for r in relations if any(c in column for c in r)]
    matrix = np.zeros((len(rows), len(hidden)))
    for i, relation in enumerate(rows):
        for cell, coefficient in relation.items():
            if cell in column:
                matrix[i, column[cell]] = coefficient
    null = _null_space(matrix)
    if null.shape[0] == 0:
        return set(hidden)
    free = np.abs(null).max(axis=0) > 1e-9
    return {cell for cell, j in column.items() if not free[j]}


def _cheapest_cycle(
    cell: int, n: int, relations: Sequence[dict[int, float]], hidden: set[int], locked: set[int], costs: list[int]
) -> set[int]:
    """The published cells to hide so that `cell` is no longer derivable, at the least total count.

    A hidden cell is free when some vector v with A v = 0 is non-zero at it and zero on every
    published cell. Minimizing sum(cost_c * |v_c|) over published cells subject to A v = 0 and
    v_cell = 1 is a linear programme whose optimal vertex is sparse (a cycle through the cell, in a
    two-way table the cheapest rectangle or longer alternating cycle); its support is the answer.
    """
    from scipy.optimize import linprog

    # Only the cells linked to `cell` through relations matter.
    component, frontier = {cell}, [cell]
    while frontier:
        current = frontier.pop()
        for relation in relations:
            if current in relation:
                for c in relation:
                    if c not in component:
                        component.add(c)
                        frontier.append(c)
    cells = sorted(component)
    position = {c: k for k, c in enumerate(cells)}
    rows = [r for r in relations if any(c in position for c in r)]
    matrix = np.zeros((len(rows) + 1, len(cells)))
    for i, relation in enumerate(rows):
        for c, coefficient in relation.items():
            matrix[i, position[c]] = coefficient
    matrix[-1, position[cell]] = 1.0
    rhs = np.zeros(len(rows) + 1)
    rhs[-1] = 1.0
    weight = np.array([0.0 if c in hidden else float(costs[c]) for c in cells])
    bounds = [(0.0, 0.0) if (c in locked and c not in hidden) else (0.0, None) for c in cells]
    # v = plus - minus, both non-negative.
    result = linprog(
        np.concatenate([weight, weight]),
        A_eq=np.hstack([matrix, -matrix]),
        b_eq=rhs,
        bounds=bounds + bounds,
        method="highs",
    )
    if result.status != 0:
        raise SuppressionError(
            "a small count can be derived from the totals and no unlocked cell is left to hide it"
        )
    v = result.x[: len(cells)] - result.x[len(cells):]
    chosen = {c for c in cells if c not in hidden and abs(v[position[c]]) > 1e-7}
    if not chosen:  # numerically degenerate: fall back to the cheapest neighbour
        neighbours = {c for r in relations if cell in r for c in r} - hidden - locked
        if not neighbours:
            raise SuppressionError("a small count can be derived from the totals and no unlocked cell is left")
        chosen = {min(neighbours, key=lambda c: (costs[c], c))}
    return chosen


def protect(
    values: Sequence[int],
    relations: Sequence[dict[int, float]],
    threshold: int,
    forced: Iterable[int] = (),
    locked: Iterable[int] = (),
) -> list[str]:
    """Suppression status (PRIMARY, COMPLEMENTARY or SHOWN) of every cell.

    values     the counts (non-negative integers), cells 0..n-1
    relations  exact linear relations a reader knows, each {cell: coefficient} meaning
               sum(coefficient * value) == 0, e.g. {total: -1, part1: 1, part2: 1}
    threshold  counts 1..threshold-1 are primary suppressed
    forced     cells to hide whatever their value (e.g. hidden elsewhere)
    locked     cells never chosen as complementary (e.g. a total that must be published)
    """
    values = [int(v) for v in values]
    if any(v < 0 for v in values):
        raise ValueError("counts must be non-negative")
    n = len(values)
    for relation in relations:
        if any(not 0 <= c < n for c in relation):
            raise ValueError("a relation refers to a cell that does not exist")
        if abs(sum(coefficient * values[c] for c, coefficient in relation.items())) > 1e-6:
            raise ValueError(f"relation {relation} does not hold for the values given")
    locked = set(locked)
    primary = {i for i, v in enumerate(values) if is_small(v, threshold)}
    hidden = primary | set(forced)
    zero_cost = max(values, default=0) + 1
    costs = [v if v > 0 else zero_cost for v in values]
    while exposed := derivable(n, relations, hidden):
        hidden |= _cheapest_cycle(min(exposed), n, relations, hidden, locked, costs)
    # Irreducible: give back every complementary cell that is not needed, the largest first.
    for cell in sorted(hidden - primary - set(forced), key=lambda c: (-costs[c], -c)):
        if not derivable(n, relations, hidden - {cell}):
            hidden.discard(cell)
    return [PRIMARY if i in primary else COMPLEMENTARY if i in hidden else SHOWN for i in range(n)]


def protect_table(
    counts: np.ndarray | Sequence[Sequence[int]],
    threshold: int,
    row_totals: bool = True,
    column_totals: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, str | None]:
    """A two-way table of counts published with its margins.

    Returns (cell statuses, row-total statuses or None, column-total statuses or None, grand-total
    status or None); margins are computed from the cells.
    """
    table = np.asarray(counts, dtype=int)
    ledger = Ledger(threshold)
    rows, columns = table.shape
    for i in range(rows):
        for j in range(columns):
            ledger.count(("cell", i, j), table[i, j])
    if row_totals:
        for i in range(rows):
            ledger.count(("row", i), table[i].sum())
            ledger.total(("row", i), [("cell", i, j) for j in range(columns)])
    if column_totals:
        for j in range(columns):
            ledger.count(("column", j), table[:, j].sum())
            ledger.total(("column", j), [("cell", i, j) for i in range(rows)])
    if row_totals and column_totals:
        ledger.count("grand", table.sum())
        ledger.total("grand", [("row", i) for i in range(rows)])
        ledger.total("grand", [("column", j) for j in range(columns)])
    ledger.solve()
    cells = np.array([[ledger.status(("cell", i, j)) for j in range(columns)] for i in range(rows)], dtype=object)
    row_status = np.array([ledger.status(("row", i)) for i in range(rows)], dtype=object) if row_totals else None
    column_status = (
        np.array([ledger.status(("column", j)) for j in range(columns)], dtype=object) if column_totals else None
    )
    grand = ledger.status("grand") if row_totals and column_totals else None
    return cells, row_status, column_status, grand


@dataclass(frozen=True)
class Count:
    """A registered count: its text is known once the ledger is solved."""

    key: Hashable
    value: int
    ledger: "Ledger"

    @property
    def status(self) -> str:
        return self.ledger.status(self.key)

    @property
    def text(self) -> str:
        return self.ledger.text(self.key)

    @property
    def shown(self) -> bool:
        return self.status == SHOWN

    def __str__(self) -> str:
        return self.text


class Ledger:
    """Every count of one publication, the relations between them, and (after `solve`) what to show.

    >>> ledger = Ledger(threshold=11)
    >>> total, a, b = ledger.count("total", 40), ledger.count("a", 3), ledger.count("b", 37)
    >>> ledger.total("total", ["a", "b"])
    >>> ledger.solve()
    >>> total.text, a.text, b.text
    ('40', '<11', 'hidden')
    """

    def __init__(self, threshold: int):
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        self._index: dict[Hashable, int] = {}
        self._values: list[int] = []
        self._relations: list[dict[int, float]] = []
        self._forced: set[int] = set()
        self._locked: set[int] = set()
        self._status: list[str] | None = None

    def __contains__(self, key: Hashable) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._values)

    def count(self, key: Hashable, value) -> Count:
        """Register a count (the same key twice must carry the same value)."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise ValueError(f"count {key!r} has no value")
        value = int(value)
        if key in self._index:
            if self._values[self._index[key]] != value:
                raise ValueError(f"count {key!r} registered twice with different values")
        else:
            if self._status is not None:
                raise RuntimeError("the ledger is solved: register every count before solve()")
            if value < 0:
                raise ValueError(f"count {key!r} is negative")
            self._index[key] = len(self._values)
            self._values.append(value)
        return Count(key, value, self)

    def get(self, key: Hashable) -> Count:
        return Count(key, self._values[self._index[key]], self)

    def total(self, total_key: Hashable, part_keys: Iterable[Hashable]) -> None:
        """The reader knows total = sum(parts)."""
        relation: dict[int, float] = {}
        for key in part_keys:
            cell = self._index[key]
            relation[cell] = relation.get(cell, 0.0) + 1.0
        total = self._index[total_key]
        relation[total] = relation.get(total, 0.0) - 1.0
        relation = {c: k for c, k in relation.items() if k != 0}
        if relation:
            self._add_relation(relation)

    def equal(self, a: Hashable, b: Hashable) -> None:
        """The reader knows a = b (the same quantity shown twice under different keys)."""
        if self._index[a] != self._index[b]:
            self._add_relation({self._index[a]: 1.0, self._index[b]: -1.0})

    def force(self, key: Hashable) -> None:
        self._forced.add(self._index[key])

    def lock(self, key: Hashable) -> None:
        self._locked.add(self._index[key])

    def _add_relation(self, relation: dict[int, float]) -> None:
        if self._status is not None:
            raise RuntimeError("the ledger is solved: state every relation before solve()")
        self._relations.append(relation)

    def solve(self) -> None:
        self._status = protect(self._values, self._relations, self.threshold, self._forced, self._locked)

    def status(self, key: Hashable) -> str:
        if self._status is None:
            raise RuntimeError("solve() the ledger before reading what to show")
        return self._status[self._index[key]]

    def text(self, key: Hashable) -> str:
        return format_count(self._values[self._index[key]], self.status(key), self.threshold)

    def summary(self) -> dict[str, int]:
        statuses = self._status or []
        return {
            "counts": len(self._values),
            "relations": len(self._relations),
            "primary": statuses.count(PRIMARY),
            "complementary": statuses.count(COMPLEMENTARY),
        }


def register_flow(
    ledger: Ledger,
    steps: Sequence[tuple[str, int, int]],
    cohort_total: Hashable | None = None,
    cohort_step_name: str = "positive_follow_up",
) -> tuple[list[Count], list[Count], int | None]:
    """Register a cohort flow (cohort.attrition) in a ledger, with the relations a reader knows.

    steps         (step, patients remaining after it, patients excluded at it), in protocol order
    cohort_total  a registered count that is the cohort size: the cohort step (the one named
                  `cohort_step_name` with that many patients, else the first step with that many) is
                  stated equal to it
    Keys are ("attrition_remaining", step) and ("attrition_excluded", step). Each step's remaining
    plus its excluded is the step before's remaining, so a small excluded count is protected by
    hiding a neighbouring remaining count. Returns (remaining, excluded, index of the cohort step).
    """
    remaining = [ledger.count(("attrition_remaining", step), n) for step, n, _ in steps]
    excluded = [ledger.count(("attrition_excluded", step), n) for step, _, n in steps]
    for i in range(1, len(steps)):
        ledger.total(remaining[i - 1].key, [remaining[i].key, excluded[i].key])
    cohort_step = None
    if cohort_total is not None:
        size = ledger.get(cohort_total).value
        for i, (step, n, _) in enumerate(steps):
            if n == size and (step == cohort_step_name or cohort_step is None):
                cohort_step = i
        if cohort_step is not None:
            ledger.equal(remaining[cohort_step].key, cohort_total)
    return remaining, excluded, cohort_step
