"""The SageMaker training platform played on this machine, for the container contract tests:
the emulated AWS (``emulator``, ``aws``), and "instances" that run a training request's exact
entry command as SageMaker runs it - each a process in its own mount namespace with a
temporary folder mounted at ``/opt/ml`` laid out as SageMaker lays it out, its own home and
only the environment a training container gets (``start_instances``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import boto3
import pytest

from nbscale import keys
from tests.support.aws_emulator import Emulator
from tests.support.emulators import AWS_ENV, container_env

HOSTS = ["algo-1", "algo-2"]


def running_emulator():
    """For a module-scoped ``emulator`` fixture: one local AWS per test module."""
    emu = Emulator()
    yield emu
    emu.stop()


def use_emulator(emulator: Emulator, monkeypatch, bucket: str = "nb-team") -> Emulator:
    """For an ``aws`` fixture: this test's AWS is ``emulator`` (credentials, endpoint, the
    bucket), with no key delivered by an earlier test and no upload remembered from one."""
    from nbscale.backends.remote import staging

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.url)
    s3 = boto3.client("s3")
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=bucket)
    keys.forget_delivered()
    staging._known.clear()  # another test's uploads are not this one's
    return emulator


def require_mount_namespaces() -> None:
    """Skip unless an instance can have its own /opt/ml (a mount namespace)."""
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /opt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(
            "an instance needs its own /opt/ml (a mount namespace: root or unshare -r); "
            f"unshare said: {probe.stderr.strip()}"
        )


def _download_prefix(uri: str, dest: Path) -> None:
    s3 = boto3.client("s3")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    dest.mkdir(parents=True, exist_ok=True)
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        rel = obj["Key"][len(prefix) :].lstrip("/")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(target))


def upload_folder(folder: Path, uri: str) -> None:
    s3 = boto3.client("s3")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder)}")


def lay_out(root: Path, request: dict, host: str) -> Path:
    """The /opt/ml tree SageMaker prepares on ``host`` before the entry starts."""
    opt_ml = root / host / "opt-ml"
    config_dir = opt_ml / "input" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters", {})))
    (config_dir / "resourceconfig.json").write_text(
        json.dumps(
            {
                "current_host": host,
                "current_instance_type": request["ResourceConfig"]["InstanceType"],
                "hosts": HOSTS[: request["ResourceConfig"]["InstanceCount"]],
                "network_interface_name": "eth0",
            }
        )
    )
    channels = {}
    for channel in request["InputDataConfig"]:
        name = channel["ChannelName"]
        channels[name] = {
            "TrainingInputMode": channel.get("InputMode", "File"),
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
        _download_prefix(
            channel["DataSource"]["S3DataSource"]["S3Uri"], opt_ml / "input" / "data" / name
        )
    (config_dir / "inputdataconfig.json").write_text(json.dumps(channels))
    for sub in ("model", "output/data", "checkpoints"):
        (opt_ml / sub).mkdir(parents=True, exist_ok=True)
    checkpoint = request.get("CheckpointConfig")
    if checkpoint:  # SageMaker copies the checkpoint URI to every instance before it starts
        _download_prefix(checkpoint["S3Uri"], opt_ml / "checkpoints")
    return opt_ml


def start_instances(
    root: Path, request: dict, port: int, **extra_env: str
) -> list[tuple[subprocess.Popen, Path]]:
    algo = request["AlgorithmSpecification"]
    command = [*algo["ContainerEntrypoint"], *algo["ContainerArguments"]]
    procs = []
    for host in HOSTS[: request["ResourceConfig"]["InstanceCount"]]:
        opt_ml = lay_out(root, request, host)
        home = root / host / "home"
        home.mkdir()
        env = container_env(
            home,
            **AWS_ENV,
            **request["Environment"],
            AWS_ENDPOINT_URL=AWS_ENDPOINT(),
            TRAINING_JOB_NAME=request["TrainingJobName"],
            # the platform's name service: both hosts are this machine
            NBSCALE_HOST_ADDRESSES=json.dumps(dict.fromkeys(HOSTS, "127.0.0.1")),
            NBSCALE_MASTER_PORT=str(port),
            **extra_env,
        )
        wrapper = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            'mount -t tmpfs none /opt && mkdir /opt/ml && mount --bind "$0" /opt/ml && exec "$@"',
            str(opt_ml),
        ]
        log = open(root / host / "stdout.log", "wb")  # noqa: SIM115 - closed by the caller
        procs.append(
            (
                subprocess.Popen(
                    [*wrapper, *command], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT
                ),
                opt_ml,
            )
        )
        log.close()
    return procs


def AWS_ENDPOINT() -> str:  # noqa: N802 - read when the instance starts

    return os.environ["AWS_ENDPOINT_URL"]


def wait_all(procs, timeout=300) -> list[int]:
    codes = []
    for proc, _ in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            raise
    return codes


def stdout(root: Path, host: str) -> str:
    return (root / host / "stdout.log").read_text(errors="replace")


def model_tar(opt_mls: list[Path]) -> bytes:
    """What SageMaker uploads: every instance's /opt/ml/model, in one model.tar.gz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for opt_ml in opt_mls:
            for path in sorted(p for p in (opt_ml / "model").rglob("*") if p.is_file()):
                tar.add(path, arcname=str(path.relative_to(opt_ml / "model")))
    return buf.getvalue()
