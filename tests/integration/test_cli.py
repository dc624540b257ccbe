"""The ``nbscale`` command, run as a real subprocess."""

from __future__ import annotations

import json
import textwrap

from nbscale.backends.local.processes import job_processes
from tests.support import wait_for


def test_run_streams_rank_prefixed_logs_and_exits_with_job_status(nbscale_cli, write_script):
    script = write_script(
        "hello.py", "import os, sys\nprint('hello from', os.environ['RANK'], sys.argv[1:])\n"
    )
    proc = nbscale_cli(
        "run", "--procs-per-node", "2", "--name", "hello", str(script), "--", "--lr", "0.1"
    )
    assert proc.returncode == 0, proc.stderr
    assert "[rank 0] hello from 0 ['--lr', '0.1']" in proc.stdout
    assert "[rank 1] hello from 1 ['--lr', '0.1']" in proc.stdout
    assert "succeeded" in proc.stderr


def test_run_of_a_failing_job_exits_non_zero_with_the_root_cause(nbscale_cli, write_script):
    script = write_script("boom.py", "import os\nraise KeyError('missing column')\n")
    proc = nbscale_cli("run", str(script))
    assert proc.returncode == 1
    assert "failed: rank 0: KeyError: 'missing column'" in proc.stderr
    assert 'boom.py", line 2' in proc.stderr


def test_detach_jobs_status_logs_and_cancel(nbscale_cli, write_script):
    script = write_script("slow.py", "import time\nprint('tick', flush=True)\ntime.sleep(600)\n")
    proc = nbscale_cli(
        "run", "--detach", "--procs-per-node", "2", "--env", "FOO=bar", str(script), check=True
    )
    job_id = proc.stdout.strip()
    assert job_id.startswith("slow-")
    listed = json.loads(nbscale_cli("jobs", "--json", check=True).stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert {"id", "name", "backend", "status", "created"} <= set(listed[0])
    wait_for(
        lambda: "tick" in nbscale_cli("logs", job_id, "--rank", "1").stdout,
        120,
        interval=0.5,
        what="log",
    )
    status = json.loads(nbscale_cli("status", job_id, "--json", check=True).stdout)
    assert status["status"] == "RUNNING" and status["spec"]["env"] == {"FOO": "bar"}
    assert {"exit_code", "failed_rank", "error"} <= set(status)
    all_logs = nbscale_cli("logs", job_id[:-2], check=True).stdout  # a unique prefix is enough
    assert "[rank 0] tick" in all_logs and "[rank 1] tick" in all_logs
    assert "CANCELLED" in nbscale_cli("cancel", job_id, check=True).stdout
    assert job_processes(job_id) == []
    assert json.loads(nbscale_cli("status", job_id, "--json").stdout)["status"] == "CANCELLED"


def test_usage_errors_are_one_line_and_exit_2(nbscale_cli, write_script):
    script = write_script("x.py", "print(1)\n")
    cases = [
        (["run", "--nodes", "two", str(script)], "argument --nodes: invalid int value: 'two'"),
        (
            ["run", "--procs-per-node", "0", str(script)],
            "procs_per_node: must be a whole number >= 1",
        ),
        (["run", "nothere.py"], "does not exist"),
        (["run", "--env", "NOEQUALS", str(script)], "--env: 'NOEQUALS' is not KEY=VALUE"),
        (["jobs", "--status", "weird"], "unknown status 'weird'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["jobs", "--", "x"], "arguments after -- are only for 'nbscale run'"),
    ]
    for argv, message in cases:
        proc = nbscale_cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert message in proc.stderr, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = nbscale_cli("run", "--backend", "nope", str(script))
    assert proc.returncode == 1 and "unknown backend 'nope'" in proc.stderr
    proc = nbscale_cli("status", "no-such-job")
    assert proc.returncode == 1 and "no job 'no-such-job'" in proc.stderr
    assert json.loads(nbscale_cli("jobs", "--json").stdout) == []


def test_config_shows_effective_settings_with_secrets_masked(nbscale_cli, nbscale_home, tmp_path):
    nbscale_home.mkdir(parents=True, exist_ok=True)
    (nbscale_home / "config.toml").write_text(
        textwrap.dedent(
            """
            default_backend = "box"
            [defaults]
            procs_per_node = 2
            [backends.box]
            type = "local"
            [backends.prod]
            type = "sagemaker"
            region = "eu-west-1"
            aws_secret_access_key = "s3cr3t"
            """
        )
    )
    (tmp_path / "nbscale.toml").write_text('[backends.prod]\nregion = "us-east-1"\n')
    data = json.loads(nbscale_cli("config", "--json", check=True).stdout)
    assert data["default_backend"] == "box"
    assert data["backends"]["prod"] == {
        "type": "sagemaker",
        "region": "us-east-1",
        "aws_secret_access_key": "********",
    }
    text = nbscale_cli("config", check=True).stdout
    assert "s3cr3t" not in text and "********" in text


def test_defaults_and_named_backend_come_from_config(nbscale_cli, nbscale_home, write_script):
    nbscale_home.mkdir(parents=True, exist_ok=True)
    (nbscale_home / "config.toml").write_text(
        'default_backend = "box"\n[defaults]\nprocs_per_node = 2\n[backends.box]\ntype = "local"\n'
    )
    script = write_script("r.py", "import os\nprint('world', os.environ['WORLD_SIZE'])\n")
    proc = nbscale_cli("run", str(script), check=True)
    assert "[rank 1] world 2" in proc.stdout
    listed = json.loads(nbscale_cli("jobs", "--json", check=True).stdout)
    assert listed[0]["backend"] == "box"
