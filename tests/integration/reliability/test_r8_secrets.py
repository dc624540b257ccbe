"""R8: planted secrets never appear in the store, a bundle, a log, a spec printout or a
panel payload.

Planted: AWS keys in the environment (tests/support/emulators.AWS_ENV) and in the config
(``aws_secret_access_key`` of a backend), a token passed with ``--env MY_API_TOKEN=``, a
password passed with ``--secret-env``, a Hugging Face token that is only in the submitting
environment. A script job, a %%train-style cell bundle and a dry run go through the CLI;
every printout (run, dry run, jobs, status, logs, config) and every body the panel's REST API
answers is captured; then the whole test home (the nbscale home, the working folder with the
captured bundle and the job's folder) is grepped for every planted value. The jobs still get
the values they were given. The figure in the README reliability section: planted values x
places looked, and the hits (0). (Remote homes: the SageMaker, Kubeflow and leave-the-machine
tests grep the container homes and the bodies sent to the emulators with the same
tests/support/emulators helpers.)
"""

from __future__ import annotations

import hashlib
import json

import pytest

from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.jobs import JobRecord, insert_job, list_jobs
from tests.support.emulators import AWS_ENV, PLANTED_SECRET, grep_tree

pytest_plugins = ["pytest_jupyter.jupyter_server"]

TOKEN = "tok-" + "7f3a9c1e5b" * 3
PASSWORD = "pw-" + "c0ffee1234" * 3


def _old_job(job_id: str, **spec) -> None:
    """A job record as an older nbscale stored it (before secret env values were kept out)."""
    spec = {"entry": {"kind": "script", "target": "x.py"}, **spec}
    insert_job(get_store(), JobRecord(job_id, "old", "local", "local", "SUCCEEDED", spec, 1.0))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_secret_env_values_reach_the_job_and_are_never_stored_or_shown(
    nbscale_cli, write_script, nbscale_home
):
    script = write_script(
        "show_secrets.py",
        "import hashlib, os\n"
        "for k in ('MY_API_TOKEN', 'DB_PASSWORD', 'PLAIN'):\n"
        "    print(k, hashlib.sha256(os.environ[k].encode()).hexdigest(), flush=True)\n",
    )
    proc = nbscale_cli(
        "run",
        "--env",
        f"MY_API_TOKEN={TOKEN}",
        "--env",
        "PLAIN=visible",
        "--secret-env",
        "DB_PASSWORD",
        str(script),
        env={"DB_PASSWORD": PASSWORD},
    )
    assert proc.returncode == 0, proc.stderr
    # the job received both values
    assert f"[rank 0] MY_API_TOKEN {_digest(TOKEN)}" in proc.stdout
    assert f"[rank 0] DB_PASSWORD {_digest(PASSWORD)}" in proc.stdout
    assert f"[rank 0] PLAIN {_digest('visible')}" in proc.stdout
    # and nothing under the home (store, spec.json, logs) holds them
    get_store().close()
    assert grep_tree(nbscale_home, TOKEN, PASSWORD) == []
    job_id = list_jobs(get_store())[0][0].id
    spec = json.loads(next(nbscale_home.rglob("spec.json")).read_text())
    assert spec["env"] == {"PLAIN": "visible"}
    assert spec["secret_env"] == ["DB_PASSWORD", "MY_API_TOKEN"]
    for args in (("jobs", "--json"), ("status", job_id, "--json")):
        text = nbscale_cli(*args, check=True).stdout
        assert TOKEN not in text and PASSWORD not in text
        assert '"secret_env"' in text
    # a secret name that is not set where the job is submitted is refused up front
    proc = nbscale_cli("run", "--secret-env", "NOT_SET_ANYWHERE", str(script))
    assert proc.returncode == 2
    assert "secret_env: NOT_SET_ANYWHERE is not set in this environment" in proc.stderr


def test_old_records_with_secret_looking_env_are_masked_when_shown(nbscale_cli):
    spec = {
        "entry": {"kind": "script", "target": "x.py"},
        "env": {"MY_API_TOKEN": TOKEN, "LR": "0.1"},
    }
    insert_job(get_store(), JobRecord("old-1", "old", "local", "local", "SUCCEEDED", spec, 1.0))
    for args in (("jobs", "--json"), ("status", "old-1", "--json")):
        text = nbscale_cli(*args, check=True).stdout
        assert TOKEN not in text and '"MY_API_TOKEN": "********"' in text and '"0.1"' in text


async def test_get_job_masks_secret_looking_env(fetch):  # noqa: F811
    _old_job("old-1", env={"MY_API_TOKEN": "tok-very-secret", "LR": "0.1"})
    code, body = await fetch("jobs", "old-1")
    assert code == 200
    assert body["spec"]["env"] == {"MY_API_TOKEN": "********", "LR": "0.1"}
    code, body = await fetch("jobs")
    assert "tok-very-secret" not in json.dumps(body)


CONFIG_SECRET = "cfgSECRET-" + "9d8e7f6a5b" * 3
HF_TOKEN = "hf_" + "abcdEFGH1234" * 3
JOB = (
    "import hashlib, os\n"
    "for k in ('MY_API_TOKEN', 'DB_PASSWORD'):\n"
    "    print(k, hashlib.sha256(os.environ[k].encode()).hexdigest(), flush=True)\n"
)


@pytest.mark.timeout(300)
async def test_planted_secrets_are_in_no_file_printout_or_panel_payload(
    jp_fetch, nbscale_cli, nbscale_home, tmp_path, monkeypatch
):
    from nbscale.celljob import prepare_cell

    planted = {
        "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
        "config aws_secret_access_key": CONFIG_SECRET,
        "--env MY_API_TOKEN": TOKEN,
        "--secret-env DB_PASSWORD": PASSWORD,
        "HF_TOKEN": HF_TOKEN,
    }
    env = {**AWS_ENV, "DB_PASSWORD": PASSWORD, "HF_TOKEN": HF_TOKEN}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nbscale_home.mkdir(parents=True, exist_ok=True)
    config = nbscale_home / "config.toml"
    config.write_text(
        'default_backend = "box"\n[backends.box]\ntype = "local"\n'
        f'[backends.prod]\ntype = "sagemaker"\nregion = "us-east-1"\n'
        f'aws_secret_access_key = "{CONFIG_SECRET}"\n'
    )
    script = tmp_path / "job.py"
    script.write_text(JOB)
    secret_args = ["--env", f"MY_API_TOKEN={TOKEN}", "--secret-env", "DB_PASSWORD"]
    printed: dict[str, str] = {}

    def cli(*args: str) -> str:
        proc = nbscale_cli(*args, env=env)
        assert "Traceback" not in proc.stderr, proc.stderr
        printed[" ".join(args)] = proc.stdout + proc.stderr
        return proc.stdout

    cli("run", "--dry-run", *secret_args, str(script))
    cli("run", "--dry-run", "--backend", "prod", "--secret-env", "HF_TOKEN", str(script))
    out = cli("run", *secret_args, str(script))
    # the job got the values it was given
    assert f"MY_API_TOKEN {_digest(TOKEN)}" in out and f"DB_PASSWORD {_digest(PASSWORD)}" in out
    job_id = list_jobs(get_store())[0][0].id
    for args in (
        ("jobs",),
        ("jobs", "--json"),
        ("status", job_id),
        ("status", job_id, "--json"),
        ("logs", job_id),
        ("config",),
        ("config", "--json"),
    ):
        cli(*args)
    # a captured cell (the bundle %%train writes) with the same env and secret env
    spec = JobSpec(
        Entry("bundle", "pending"), env={"MY_API_TOKEN": TOKEN}, secret_env=("HF_TOKEN",)
    )
    bundle_path = prepare_cell("y = x + 1", {"x": 1}, spec, outputs=["y"]).write()
    assert bundle_path.is_file()

    # what the panel reads
    bodies: dict[str, bytes] = {}
    for parts in (
        ("jobs",),
        ("jobs", job_id),
        ("jobs", job_id, "logs"),
        ("jobs", job_id, "metrics"),
        ("backends",),
        ("idle",),
    ):
        resp = await jp_fetch("nbscale", "api", *parts)
        assert resp.code == 200, (parts, resp.body)
        bodies["/".join(parts)] = resp.body

    get_store().close()  # the WAL is flushed into the database file before the grep
    leaks = [
        f"{where}: {name}"
        for name, value in planted.items()
        for where, text in printed.items()
        if value in text
    ]
    leaks += [
        f"GET {where}: {name}"
        for name, value in planted.items()
        for where, raw in bodies.items()
        if value.encode() in raw
    ]
    # the whole test home: nbscale home (store, job folders, logs, keys) and working folder;
    # the config file holds the secret the user wrote there, and nothing else may
    hits = grep_tree(tmp_path, *planted.values())
    assert [h for h in hits if str(config) in h], "the grep must see the planted config"
    leaks += [hit for hit in hits if str(config) not in hit]
    assert leaks == [], leaks
    assert len(printed) == 10 and len(bodies) == 6
