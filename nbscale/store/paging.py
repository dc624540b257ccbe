"""Keyset (seek) paging: one opaque cursor per page boundary, one indexed range query per page.

A page is asked for with ``after=CURSOR``, where the cursor names the last row
of the page before it by its order key (``created`` and the row's unique
``id``/``name``). The query seeks to that key in a composite index and reads
``limit + 1`` rows, so a page costs the same at the first row as at the
100,000th, and rows inserted or ended between two requests never shift a page:
nothing is skipped or shown twice.

The cursor is ``base64url(JSON [kind, created, key])``: opaque to clients, but
checked here, so a mangled cursor or one given out for another list is a
:class:`BadCursor` (a ``SpecError``: a 400 at the REST API) with one message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

from ..errors import SpecError

T = TypeVar("T")

# the lists that page, each with its cursor's tag
JOBS, RUNS, ENDPOINTS = "jobs", "runs", "endpoints"
_KINDS = (JOBS, RUNS, ENDPOINTS)
MAX_CURSOR = 512  # a cursor names a float and an id of at most a few hundred characters


class BadCursor(SpecError):
    """An ``after`` cursor this server did not give out (mangled, truncated, another list's)."""

    def __init__(self, problem: str):
        super().__init__(
            "after",
            problem,
            "pass the 'next' value of the page before unchanged, or leave 'after' out for the "
            "first page",
        )


class Page(list, Generic[T]):
    """The rows of one page (a list), with ``next``: the cursor of the page after it
    (None on the last page) and, where the list keeps one, ``total``: the rows that
    match the filters in all pages."""

    def __init__(self, items: Iterable[T] = (), next: str | None = None, total: int | None = None):
        super().__init__(items)
        self.next = next
        self.total = total


def encode_cursor(kind: str, created: float, key: str) -> str:
    if kind not in _KINDS:
        raise ValueError(f"unknown cursor kind {kind!r}")
    raw = json.dumps([kind, created, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str) -> tuple[float, str]:
    """``(created, key)`` of a cursor that :func:`encode_cursor` gave out for ``kind``."""
    if not isinstance(cursor, str) or not cursor:
        raise BadCursor("is empty")
    if len(cursor) > MAX_CURSOR:
        raise BadCursor(f"is too long ({len(cursor)} characters) to be a cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadCursor(f"{_shown(cursor)} is not a cursor this server gave out") from None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], str)
        or isinstance(value[1], bool)
        or not isinstance(value[1], int | float)
        or not math.isfinite(value[1])
        or not isinstance(value[2], str)
    ):
        raise BadCursor(f"{_shown(cursor)} is not a cursor this server gave out")
    if value[0] != kind:
        raise BadCursor(
            f"{_shown(cursor)} is a cursor of the {value[0]} list, not of the {kind} list"
        )
    return float(value[1]), value[2]


def _shown(cursor: str) -> str:
    return repr(cursor) if len(cursor) <= 40 else repr(cursor[:37] + "...")


def seek(
    store: Any,
    kind: str,
    table: str,
    key: str,
    where: Sequence[str] = (),
    params: Sequence[Any] = (),
    limit: int | None = 50,
    after: str | None = None,
    descending: bool = True,
) -> Page[Any]:
    """One page of ``table`` rows in ``(created, key)`` order (newest first when
    ``descending``), after the row named by cursor ``after``, as ``sqlite3.Row``s.

    ``limit`` None reads every row from the cursor on (no ``next``). The caller
    supplies an index on ``(filter columns..., created, key)`` so the range and
    the order come from the index: no scan, no sort.
    """
    if limit is not None and limit < 1:
        raise SpecError("limit", f"must be at least 1, got {limit}")
    clauses, args = list(where), list(params)
    if after is not None:
        created, last = decode_cursor(kind, after)
        clauses.append(f"(created, {key}) {'<' if descending else '>'} (?, ?)")
        args += [created, last]
    sql = f"SELECT * FROM {table}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    order = "DESC" if descending else "ASC"
    sql += f" ORDER BY created {order}, {key} {order}"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit + 1)  # one more: whether a page follows, without a count
    rows = store.query(sql, tuple(args))
    more = limit is not None and len(rows) > limit
    if more:
        rows = rows[:limit]
        last_row = rows[-1]
        return Page(rows, encode_cursor(kind, last_row["created"], last_row[key]))
    return Page(rows)
