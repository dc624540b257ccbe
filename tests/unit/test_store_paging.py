"""Keyset paging in the store: the cursor, the seek, the indexes and the kept counts."""

from __future__ import annotations

import base64
import json
import sqlite3

import pytest

from nbscale.errors import SpecError
from nbscale.store import Store, get_store
from nbscale.store import pipelines as runs_db
from nbscale.store.endpoints import EndpointRecord, insert_endpoint, list_endpoints
from nbscale.store.jobs import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    count_jobs,
    insert_job,
    page_jobs,
    update_job,
)
from nbscale.store.paging import BadCursor, decode_cursor, encode_cursor
from nbscale.store.schema import COMPONENTS, migrate, statements


def record(job_id: str, created: float, status: str = SUCCEEDED, backend: str = "local"):
    return JobRecord(job_id, "j", backend, "local", status, {}, created=created)


# -- the cursor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created", "key"),
    [(1764950000.123456, "job-00001"), (0.1 + 0.2, "a/b+c=é"), (1e-300, ""), (7, "x" * 200)],
)
def test_cursor_round_trips_the_exact_key(created, key):
    cursor = encode_cursor("jobs", created, key)
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor("jobs", cursor) == (float(created), key)


def b64(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("cursor", "needle"),
    [
        ("", "is empty"),
        ("not base64!", "is not a cursor this server gave out"),
        ("AAAA", "is not a cursor this server gave out"),  # valid base64, not JSON
        (b64({"c": 1}), "is not a cursor this server gave out"),
        (b64(["jobs", 1.0]), "is not a cursor this server gave out"),
        (b64(["jobs", "1.0", "id"]), "is not a cursor this server gave out"),
        (b64(["jobs", True, "id"]), "is not a cursor this server gave out"),
        (b64(["jobs", 1.0, 5]), "is not a cursor this server gave out"),
        (b64(["runs", 1.0, "id"]), "a cursor of the runs list, not of the jobs list"),
        ("A" * 600, "is too long"),
        (base64.urlsafe_b64encode(b'["jobs", NaN, "x"]').decode(), "not a cursor"),
    ],
)
def test_a_bad_cursor_is_one_spec_error_naming_after(cursor, needle):
    with pytest.raises(BadCursor, match=needle) as info:
        decode_cursor("jobs", cursor)
    assert isinstance(info.value, SpecError) and info.value.field == "after"
    assert "'next'" in info.value.hint


def test_page_with_a_bad_cursor_raises_before_reading():
    with pytest.raises(BadCursor):
        page_jobs(get_store(), after="garbage")


# -- the seek -----------------------------------------------------------------------------


def walk(fetch):
    seen, cursor = [], None
    while True:
        page = fetch(cursor)
        seen += page
        if page.next is None:
            return seen
        cursor = page.next


def test_jobs_pages_cover_every_match_once_newest_first_ties_broken_by_id():
    store = get_store()
    for i in range(53):  # groups of 3 share a created time: the id decides among them
        status = FAILED if i % 4 == 0 else SUCCEEDED
        insert_job(store, record(f"j-{i:03d}", 1000 + i // 3, status, "a" if i % 2 else "b"))
    everything = walk(lambda c: page_jobs(store, limit=7, after=c))
    ids = [r.id for r in everything]
    assert ids == sorted(ids, key=lambda x: (1000 + int(x[2:]) // 3, x), reverse=True)
    assert len(set(ids)) == 53
    failed_b = walk(lambda c: page_jobs(store, status="failed", backend="b", limit=4, after=c))
    assert [r.id for r in failed_b] == [f"j-{i:03d}" for i in range(52, -1, -1) if i % 4 == 0]
    assert page_jobs(store, status="FAILED", backend="b", limit=4).total == len(failed_b)


def test_a_full_last_page_has_no_next():
    store = get_store()
    for i in range(6):
        insert_job(store, record(f"j-{i}", 1000 + i))
    first = page_jobs(store, limit=3)
    last = page_jobs(store, limit=3, after=first.next)
    assert [r.id for r in last] == ["j-2", "j-1", "j-0"] and last.next is None


def test_runs_and_endpoints_page_by_their_own_cursors():
    store = get_store()
    for i in range(5):
        runs_db.insert_run(
            store,
            {"id": f"r-{i}", "name": "p", "source": "p.yaml", "backend": "local"}
            | {"status": "SUCCEEDED", "created": 2000 + i},
            [],
        )
        insert_endpoint(
            store,
            EndpointRecord(
                f"ep-{i}", "local", "local", "READY", "http://x", 9000 + i, "/m", 1, 1,
                created=3000 - i,
            ),
        )  # fmt: skip
    runs = walk(lambda c: runs_db.list_runs(store, limit=2, after=c))
    assert [r["id"] for r in runs] == ["r-4", "r-3", "r-2", "r-1", "r-0"]
    eps = walk(lambda c: list_endpoints(store, limit=2, after=c))
    assert [e.name for e in eps] == ["ep-4", "ep-3", "ep-2", "ep-1", "ep-0"]  # oldest first
    assert [e.name for e in list_endpoints(store)] == [e.name for e in eps]  # no limit: all
    with pytest.raises(BadCursor, match="of the runs list, not of the endpoints list"):
        list_endpoints(store, limit=2, after=runs_db.list_runs(store, limit=2).next)


# -- the indexes and the counts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "where", "params"),
    [
        ("jobs", "id", "", ()),
        ("jobs", "id", "status = ? AND", ("FAILED",)),
        ("jobs", "id", "backend = ? AND", ("local",)),
        ("jobs", "id", "status = ? AND backend = ? AND", ("FAILED", "local")),
        ("pipeline_runs", "id", "", ()),
        ("endpoints", "name", "", ()),
    ],
)
def test_every_page_query_is_an_index_seek_without_a_sort(table, key, where, params):
    store = get_store()
    plan = store.query(
        f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE {where} (created, {key}) < (?, ?) "
        f"ORDER BY created DESC, {key} DESC LIMIT 51",
        (*params, 1.0, "x"),
    )
    text = " | ".join(r["detail"] for r in plan)
    assert "SEARCH" in text and "USING INDEX" in text and "(created," in text, text
    assert "TEMP B-TREE" not in text, text


def test_counts_follow_inserts_status_changes_and_deletes():
    store = get_store()
    for i in range(10):
        insert_job(store, record(f"j-{i}", 1000 + i, RUNNING, "a" if i < 6 else "b"))
    assert (count_jobs(store), count_jobs(store, RUNNING), count_jobs(store, backend="b")) == (
        10,
        10,
        4,
    )
    update_job(store, "j-0", status=FAILED)
    update_job(store, "j-7", status=FAILED)
    update_job(store, "j-7", only_if_active=False, error="x")  # no status change
    store.execute("UPDATE jobs SET backend = 'b' WHERE id = 'j-1'")
    store.execute("DELETE FROM jobs WHERE id = 'j-9'")
    truth = {
        (s, b): n
        for s, b, n in store.query("SELECT status, backend, COUNT(*) FROM jobs GROUP BY 1, 2")
    }
    for (status, backend), n in truth.items():
        assert count_jobs(store, status, backend) == n
    assert count_jobs(store) == 9 and count_jobs(store, FAILED) == 2
    assert count_jobs(store, FAILED, "b") == 1 and count_jobs(store, backend="b") == 4


def test_a_store_from_before_keyset_paging_is_migrated_with_its_counts(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER)")
    for component, migrations in COMPONENTS.items():  # every component at its first version
        for statement in statements(migrations[0]):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_versions VALUES (?, 1)", (component,))
    for i in range(7):
        conn.execute(
            "INSERT INTO jobs (id, name, backend, backend_type, status, spec, created) "
            "VALUES (?, 'j', 'local', 'local', ?, '{}', ?)",
            (f"j-{i}", FAILED if i < 3 else SUCCEEDED, 1000 + i),
        )
    conn.close()
    store = Store(path)
    page = page_jobs(store, status=FAILED, limit=2)
    assert [r.id for r in page] == ["j-2", "j-1"] and page.total == 3
    assert count_jobs(store) == 7
    names = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_page", "jobs_page_status", "pipeline_runs_page", "endpoints_page"} <= names
    assert not {"jobs_created", "jobs_status", "pipeline_runs_created"} & names
    store.close()
    conn = sqlite3.connect(path)
    migrate(conn)  # a second run finds nothing to do
    conn.close()


def test_migration_statements_keep_a_trigger_body_whole():
    script = "CREATE TABLE t (a);\nCREATE TRIGGER x AFTER INSERT ON t BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n"
    assert len(statements(script)) == 2
    with pytest.raises(ValueError, match="incomplete"):
        statements("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1;")


def test_the_python_api_pages_with_the_same_cursor():
    import nbscale
    from nbscale import pipeline_runs

    store = get_store()
    for i in range(5):
        insert_job(store, record(f"j-{i}", 1000 + i))
    first = nbscale.jobs(limit=2)
    assert [j.id for j in first] == ["j-4", "j-3"] and first.total == 5
    rest = walk(lambda c: nbscale.jobs(limit=2, after=c)) if first.next else []
    assert [j.id for j in rest] == ["j-4", "j-3", "j-2", "j-1", "j-0"]
    assert pipeline_runs.runs(limit=2).next is None  # no runs: one empty page
    with pytest.raises(BadCursor):
        nbscale.jobs(after=first.next[:-4])
