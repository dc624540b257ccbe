"""Store and config, without any job running."""

from __future__ import annotations

import sqlite3
import time

import pytest

from nbscale import config, paths
from nbscale.errors import NotFound, SpecError
from nbscale.store import Store, StoreError, get_store
from nbscale.store.jobs import (
    PENDING,
    JobRecord,
    get_job,
    insert_job,
    list_jobs,
    page_jobs,
    update_job,
)
from nbscale.store.schema import COMPONENTS


def record(job_id: str, created: float = 0.0) -> JobRecord:
    return JobRecord(
        id=job_id,
        name="n",
        backend="local",
        backend_type="local",
        status=PENDING,
        spec={"nodes": 1},
        created=created or time.time(),
    )


def test_store_is_wal_with_a_versioned_schema():
    store = get_store()
    assert store.query_one("PRAGMA journal_mode")[0] == "wal"
    versions = dict(store.query("SELECT component, version FROM schema_versions"))
    assert versions == {name: len(migrations) for name, migrations in COMPONENTS.items()}
    assert store.path == paths.home() / "nbscale.db"


def test_newer_schema_is_refused_with_advice(nbscale_home):
    get_store().query("SELECT 1")
    conn = sqlite3.connect(paths.db_path())
    conn.execute("UPDATE schema_versions SET version = 99 WHERE component = 'jobs'")
    conn.commit()
    conn.close()
    refused = Store(paths.db_path())
    for _ in range(2):  # every call, not only the first: no half-set-up connection is kept
        with pytest.raises(StoreError, match="newer nbscale.*upgrade nbscale"):
            refused.query("SELECT 1")


def test_ending_a_job_is_decided_once():
    store = get_store()
    insert_job(store, record("a-1"))
    assert update_job(store, "a-1", status="SUCCEEDED", exit_code=0)
    assert not update_job(store, "a-1", status="LOST", error="late")  # an ended job stays ended
    job = get_job(store, "a-1")
    assert (job.status, job.exit_code, job.error) == ("SUCCEEDED", 0, None)
    assert update_job(store, "a-1", only_if_active=False, info_patch={"note": 1})
    assert get_job(store, "a-1").info == {"note": 1}


def test_paging_and_filters():
    store = get_store()
    for i in range(25):
        insert_job(store, record(f"j-{i:02d}", created=1000 + i))
    update_job(store, "j-03", status="FAILED")
    first = page_jobs(store, limit=10)
    page, total = list_jobs(store, limit=10, after=first.next)
    assert total == 25 and [r.id for r in page] == [f"j-{i:02d}" for i in range(14, 4, -1)]
    failed, n = list_jobs(store, status="failed")
    assert n == 1 and failed[0].id == "j-03"
    with pytest.raises(NotFound, match="nbscale jobs"):
        get_job(store, "zzz")


def test_config_errors_name_the_key_and_the_fix(nbscale_home, tmp_path):
    nbscale_home.mkdir(parents=True, exist_ok=True)
    cfg = nbscale_home / "config.toml"
    cfg.write_text("[backends.x]\ntype = 'slurm'\n")
    with pytest.raises(
        SpecError, match=r"backends.x.type: must be one of kubeflow, local, sagemaker"
    ):
        config.load()
    cfg.write_text("default_backend = 'gpu'\n")
    with pytest.raises(SpecError, match="default_backend: names 'gpu'"):
        config.load()
    cfg.write_text("this is = = not toml")
    with pytest.raises(SpecError, match="is not valid TOML"):
        config.load()
    cfg.unlink()
    assert config.load().backend().name == "local"
