"""Keyset paging over /nbscale/api/ (jobs, pipeline runs, endpoints) against a real server and
the real store: every page walked with its ``next`` cursor, rows inserted between the pages,
nothing skipped or repeated; a bad cursor is a 400 naming ``after``."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from nbscale.store import get_store
from nbscale.store import pipelines as runs_db
from nbscale.store.endpoints import EndpointRecord, insert_endpoint
from nbscale.store.jobs import STATUSES

pytest_plugins = ["pytest_jupyter.jupyter_server"]

JOB_COLUMNS = "id, name, backend, backend_type, status, spec, created, info"
_serial = itertools.count()


def add_jobs(rows: list[tuple[str, str, str, float]]) -> None:
    """(id, status, backend, created) rows in one transaction, as many submits would leave them."""
    get_store().write(
        lambda conn: conn.executemany(
            f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?, 'j', ?, 'local', ?, ?, ?, '{{}}')",
            [(i, b, s, json.dumps({"nodes": 1}), c) for i, s, b, c in rows],
        )
    )


def new_jobs(n: int, created: float, rng: random.Random) -> list[tuple[str, str, str, float]]:
    return [
        (f"new-{next(_serial):05d}", rng.choice(STATUSES), rng.choice("ab"), created)
        for _ in range(n)
    ]


async def walk(fetch, route, key, params, between=None):
    """Every page of ``route`` from the first, calling ``between(page)`` after each one."""
    seen, after, pages = [], None, 0
    while True:
        query = {**params, **({"after": after} if after else {})}
        code, page = await fetch(route, params=query)
        assert code == 200, page
        seen += page[key]
        pages += 1
        if between:
            between(page)
        if page["next"] is None:
            return seen, page, pages
        assert len(page[key]) == params["limit"], "a page before the last one is full"
        after = page["next"]


def order(rows):
    return sorted(rows, key=lambda r: (r[3], r[0]), reverse=True)


@pytest.mark.parametrize(
    "filters",
    [{}, {"status": "FAILED"}, {"backend": "b"}, {"status": "SUCCEEDED", "backend": "a"}],
    ids=["all", "status", "backend", "status+backend"],
)
async def test_walking_every_page_of_jobs_skips_and_repeats_nothing_while_jobs_arrive(
    fetch, filters
):
    rng = random.Random(7)
    # 3,000 jobs, four to a creation time: the id breaks the ties
    start = [
        (f"job-{i:05d}", rng.choice(STATUSES), rng.choice("ab"), 1_000_000.0 + i // 4)
        for i in range(3000)
    ]
    add_jobs(start)

    def matches(row):
        return filters.get("status", row[1]) == row[1] and filters.get("backend", row[2]) == row[2]

    late_tail: list[tuple] = []

    def between(page):
        # newer jobs land above every cursor: they belong to a first page, never to this walk;
        # older ones land below it and must come up exactly once, in order
        add_jobs(new_jobs(3, 2_000_000.0 + next(_serial), rng))
        if page["next"] is None:
            return  # the walk is over
        tail = new_jobs(2, 1000.0 - next(_serial), rng)
        add_jobs(tail)
        late_tail.extend(tail)

    seen, last, pages = await walk(fetch, "jobs", "jobs", {"limit": 97, **filters}, between)
    ids = [j["id"] for j in seen]
    expected = [r[0] for r in order([r for r in start + late_tail if matches(r)])]
    assert len(ids) == len(set(ids)), "a job was shown twice"
    assert ids == expected
    assert pages >= 3
    for job in seen:
        assert all(job[k] == v for k, v in filters.items()), job
    # the total counts every match now, the jobs that arrived during the walk included
    sql = "SELECT COUNT(*) FROM jobs" + (
        " WHERE " + " AND ".join(f"{k} = ?" for k in filters) if filters else ""
    )
    code, now = await fetch("jobs", params={"limit": 1, **filters})
    assert now["total"] == get_store().query_one(sql, tuple(filters.values()))[0]
    assert last["total"] <= now["total"]


async def test_a_job_that_changes_status_mid_walk_is_still_listed_once(fetch):
    add_jobs([(f"job-{i:03d}", "RUNNING", "a", 5000.0 + i) for i in range(300)])
    store = get_store()

    def between(page):
        # the poller ends jobs while someone pages: rows on both sides of the cursor change
        store.execute(
            "UPDATE jobs SET status = 'SUCCEEDED' WHERE status = 'RUNNING' AND rowid % 5 = ?",
            (next(_serial) % 5,),
        )

    seen, _, _ = await walk(fetch, "jobs", "jobs", {"limit": 50}, between)
    assert [j["id"] for j in seen] == [f"job-{i:03d}" for i in range(299, -1, -1)]


async def test_pipeline_runs_page_by_cursor_while_runs_start(fetch):
    store = get_store()

    def add_run(run_id: str, created: float) -> None:
        runs_db.insert_run(
            store,
            {"id": run_id, "name": "flow", "source": "flow.yaml", "backend": "local"}
            | {"status": "SUCCEEDED", "created": created, "started": created, "ended": created},
            [{"name": "only", "position": 0, "status": "SUCCEEDED", "depends_on": []}],
        )

    for i in range(230):
        add_run(f"run-{i:04d}", 10_000.0 + i // 3)

    def between(page):
        add_run(f"run-late-{next(_serial)}", 50_000.0 + next(_serial))

    seen, _, pages = await walk(fetch, "pipelines", "runs", {"limit": 40}, between)
    assert [r["id"] for r in seen] == sorted(
        (f"run-{i:04d}" for i in range(230)),
        key=lambda x: (10_000 + int(x[4:]) // 3, x),
        reverse=True,
    )
    assert pages == 6 and seen[0]["steps"][0]["name"] == "only"


async def test_endpoints_page_by_cursor_oldest_first(fetch):
    store = get_store()
    for i in range(60):
        insert_endpoint(
            store,
            EndpointRecord(
                f"ep-{i:02d}", "local", "local", "FAILED", "", 0, "/nowhere", 1, 1,
                created=100.0 + i // 2, updated=100.0,
            ),
        )  # fmt: skip
    seen, last, pages = await walk(fetch, "endpoints", "endpoints", {"limit": 25})
    assert [e["name"] for e in seen] == [f"ep-{i:02d}" for i in range(60)]
    assert (pages, len(last["endpoints"])) == (3, 10)


@pytest.mark.parametrize("route", ["jobs", "pipelines", "endpoints"])
@pytest.mark.parametrize(
    ("after", "needle"),
    [
        ("garbage!", "is not a cursor this server gave out"),
        ("eyJ", "is not a cursor this server gave out"),
        ("A" * 1000, "is too long"),
    ],
)
async def test_a_bad_cursor_is_a_400_naming_after(fetch, route, after, needle):
    code, body = await fetch(route, params={"after": after})
    assert code == 400, body
    assert body["error"] == "bad_request" and body["field"] == "after", body
    assert needle in body["message"] and "'next'" in body["message"], body


async def test_a_cursor_of_another_list_and_offset_are_refused(fetch):
    add_jobs([(f"job-{i}", "FAILED", "a", 1.0 + i) for i in range(3)])
    code, page = await fetch("jobs", params={"limit": 1})
    code, body = await fetch("pipelines", params={"after": page["next"]})
    assert code == 400 and "a cursor of the jobs list, not of the runs list" in body["message"]
    for route in ("jobs", "pipelines", "endpoints"):
        code, body = await fetch(route, params={"offset": 10})
        assert code == 400 and body["field"] == "offset", body
        assert "?after=" in body["message"], body
