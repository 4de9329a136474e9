"""What the tabs share: turning rows into tables, and showing a part of the stack that did not
answer as a message instead of a traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import pandas as pd
import streamlit as st

from dashboard.backend import Unavailable

T = TypeVar("T")


def plain(value: Any) -> Any:
    """A value as a table cell: numbers as floats, enums and lists as text."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items())
    if isinstance(value, datetime | int | float | str) or value is None:
        return value
    return str(value)


def frame(rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    data = [{k: plain(v) for k, v in row.items()} for row in rows]
    table = pd.DataFrame(data)
    if columns is not None:
        table = table.reindex(columns=columns) if data else pd.DataFrame(columns=columns)
    return table


def answer(what: str, call: Callable[[], T]) -> T | None:
    """``call()``, or None after saying what did not answer."""
    try:
        return call()
    except Unavailable as exc:
        st.warning(f"{what}: {exc}")
    except TimeoutError:
        st.warning(f"{what}: no answer within the time allowed")
    return None
