"""Small, pure helpers that turn results into what people read: suppressed counts, tables, plots.

Imported by the code location, so nothing heavy at import time: pandas and matplotlib are only
needed by callers that already hold a frame or a figure."""

from __future__ import annotations

import base64
import io
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

SMALL_CELL_THRESHOLD = 11


def suppress_count(n: int | None, threshold: int = SMALL_CELL_THRESHOLD) -> str:
    """A count as shown to people: 1..threshold-1 becomes `<threshold` (0 stays 0: nothing to protect)."""
    try:
        n = int(n)
    except (TypeError, ValueError):  # None, NaN, pd.NA: no count to show
        return ""
    return f"<{threshold}" if 0 < n < threshold else f"{n:,}"


# A whole number in running text ("0% of 5 rows", "3"), not part of a decimal, a percentage or a word.
_WHOLE_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})*(?![\w%]|[.,]\d)")


def suppress_numbers_in_text(text: str | None, threshold: int = SMALL_CELL_THRESHOLD) -> str | None:
    """Every whole number 1..threshold-1 in a text (e.g. a data-quality observation, "0% of 5 rows")
    replaced by `<threshold`: such texts carry counts too."""
    if text is None:
        return None
    return _WHOLE_NUMBER.sub(lambda m: suppress_count(int(m.group().replace(",", "")), threshold), text)


def markdown_table(frame: pd.DataFrame, max_rows: int = 20) -> str:
    return frame.head(max_rows).to_markdown(index=False)


def figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_image(figure, alt: str) -> str:
    """A figure as markdown with the PNG inline (how the Dagster UI shows a plot in metadata)."""
    return f"![{alt}]({png_data_uri(figure_png(figure))})"
