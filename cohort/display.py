"""Small, pure helpers that turn results into what people read: suppressed counts, tables, plots."""

from __future__ import annotations

import base64
import io

import pandas as pd

SMALL_CELL_THRESHOLD = 11


def suppress_count(n: int | None, threshold: int = SMALL_CELL_THRESHOLD) -> str:
    """A count as shown to people: 1..threshold-1 becomes `<threshold` (0 stays 0: nothing to protect)."""
    if n is None or pd.isna(n):
        return ""
    n = int(n)
    return f"<{threshold}" if 0 < n < threshold else f"{n:,}"


def markdown_table(frame: pd.DataFrame, max_rows: int = 20) -> str:
    return frame.head(max_rows).to_markdown(index=False)


def figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
