"""Submit of a ``%%train``-style job whose folder and requirements travel (issue 19).

    python benchmarks/bench_code_travels.py [--rounds 3] [--folder-mb 20]

The kernel's working folder holds ``--folder-mb`` of code and data (60 Python modules and a
data file) and a ``requirements.txt`` of five pure-Python packages, generated here and
served from a local ``--find-links`` folder (no package index). Each round starts from a
fresh nbscale home and a fresh storage prefix, with this process's hash memory cleared:

- ``first``: the cell is captured and submitted; the folder is hashed, zipped and uploaded,
  the requirements' wheelhouse is built with pip and uploaded, the job is created;
- ``second``: the same cell again, unchanged: nothing is rebuilt or uploaded (the PUTs to
  the storage are counted through the emulator's recording proxy).

Side by side, against the same emulators: ``bare_create``, the platform's create call
alone with the same request (boto3 ``create_training_job``; the kubernetes client's
``create_namespaced_custom_object`` with the same TrainJob); and ``bare_upload_create``,
what a hand-written script pays to send the same bytes (the folder's zip and the wheelhouse
uploaded with boto3) and then create the job. Goals: first <= 3 s, second <= 0.3 s.
The backends use ``image = ...`` (an image that brings nbscale): the runtime wheelhouse
(built once, cached) is not timed.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import save  # noqa: E402

from tests.support.aws_emulator import Emulator  # noqa: E402
from tests.support.emulators import AWS_ENV  # noqa: E402
from tests.support.kube_emulator import KubeApi, KubeEmulator  # noqa: E402

CELL = "import pkg0\nfrom mod0 import f0\nrows = len(open('data/blob.bin', 'rb').read())\n"
PACKAGES = 5
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-runtime:0.1.0"


def make_project(root: Path, folder_mb: float) -> Path:
    """The folder: modules, a data file, and requirements naming 5 local packages."""
    project = root / "project"
    (project / "data").mkdir(parents=True)
    code_bytes = 0
    for i in range(60):
        body = f"def f{i}(x):\n    return x + {i}\n" + "# padding line of a module\n" * 1200
        (project / f"mod{i}.py").write_text(body)
        code_bytes += len(body)
    data = int(folder_mb * (1 << 20)) - code_bytes
    (project / "data" / "blob.bin").write_bytes(os.urandom(max(data, 0)))
    wheels = root / "find-links"
    for i in range(PACKAGES):
        src = root / "src" / f"pkg{i}"
        (src / f"pkg{i}").mkdir(parents=True)
        (src / f"pkg{i}" / "__init__.py").write_text(f"VALUE = {i}\n")
        (src / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "pkg{i}"\nversion = "1.0.{i}"\n'
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "--no-index", "-w", str(wheels), str(src)],
            check=True, capture_output=True,
        )  # fmt: skip
    lines = ["--no-index", f"--find-links {wheels}"]
    lines += [f"pkg{i}==1.0.{i}" for i in range(PACKAGES)]
    (project / "requirements.txt").write_text("\n".join(lines) + "\n")
    return project


def puts(emu: Emulator) -> int:
    with emu.lock:
        return sum(1 for method, _, _ in emu.bodies if method == "PUT")


def forget() -> None:
    """A fresh kernel: no object this process saw, no file hash it remembers."""
    from nbscale import codefolder
    from nbscale.backends.remote import staging
    from nbscale.backends.sagemaker import jobs as sm_jobs

    staging._known.clear()
    codefolder._hashes.clear()
    sm_jobs._known.clear()


def submit_cell(name: str):
    from nbscale.celljob import prepare_cell
    from nbscale.specs import Entry, JobSpec

    spec = JobSpec(entry=Entry("bundle", "<cell>"), name=name, backend="target")
    start = time.perf_counter()
    job = prepare_cell(CELL, {}, spec).submit()
    return time.perf_counter() - start, job


def round_trip(emu, home: Path, config_text: str, name: str) -> dict:
    os.environ["NBSCALE_HOME"] = str(home)
    home.mkdir(parents=True)
    (home / "config.toml").write_text(config_text)
    from nbscale import store

    store._stores.clear()
    forget()
    before = puts(emu)
    first, job = submit_cell(name)
    first_puts = puts(emu) - before
    time.sleep(1.1)  # a re-run comes later than the first
    before = puts(emu)
    second, again = submit_cell(name)
    return {
        "first": first,
        "second": second,
        "puts_first": first_puts,
        "puts_second": puts(emu) - before,
        "job": job,
        "again": again,
    }


def bare_uploads(home: Path, bucket: str, prefix: str) -> float:
    """Send the same bytes with boto3: the folder's zip and the wheelhouse."""
    import boto3

    s3 = boto3.client("s3")
    files = [*(home / "code").glob("*.zip"), *(home / "requirements").glob("*/requirements.zip")]
    start = time.perf_counter()
    for i, path in enumerate(files):
        s3.upload_file(str(path), bucket, f"{prefix}/bare/{i}/{path.name}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder-mb", type=float, default=20.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nbscale-bench-travel-"))
    project = make_project(work, args.folder_mb)
    emu = Emulator()
    kube = KubeEmulator()
    os.environ.update(AWS_ENV)
    os.environ["AWS_ENDPOINT_URL"] = emu.url
    os.environ["KUBECONFIG"] = str(kube.kubeconfig(work / "kubeconfig", "bench"))
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    os.chdir(project)  # the kernel's working folder is what travels
    platforms = {
        "sagemaker": lambda i: (
            "[backends.target]\ntype = \"sagemaker\"\nregion = \"us-east-1\"\n"
            "role_arn = \"arn:aws:iam::123456789012:role/bench\"\n"
            f"storage = \"s3://bench/sm-{i}\"\nimage = \"{IMAGE}\"\n"
        ),
        "kubeflow": lambda i: (
            "[backends.target]\ntype = \"kubeflow\"\n"
            f"storage = \"s3://bench/kf-{i}\"\nendpoint_url = \"{emu.url}\"\n"
            f"image = \"{IMAGE}\"\nwheelhouse = false\n"
        ),
    }  # fmt: skip
    api = KubeApi(kube.url)
    results: dict = {}
    try:
        for platform, conf in platforms.items():
            samples: dict[str, list[float]] = {
                "first": [], "second": [], "bare_create": [], "bare_upload_create": []
            }  # fmt: skip
            put_counts: dict[str, list[int]] = {"first": [], "second": []}
            for i in range(args.rounds):
                home = work / f"home-{platform}-{i}"
                got = round_trip(emu, home, conf(i), f"bench-{platform[:2]}-{i}")
                samples["first"].append(got["first"])
                samples["second"].append(got["second"])
                put_counts["first"].append(got["puts_first"])
                put_counts["second"].append(got["puts_second"])
                if platform == "sagemaker":
                    request = copy.deepcopy(emu.operations("CreateTrainingJob")[-1])
                    sm = boto3.client("sagemaker", region_name="us-east-1")

                    def create(request=request, i=i, sm=sm, tag="") -> float:
                        request["TrainingJobName"] = f"bare-{i}{tag}-{time.monotonic_ns()}"[:63]
                        start = time.perf_counter()
                        sm.create_training_job(**request)
                        return time.perf_counter() - start
                else:
                    from nbscale.backends.kubeflow.manifests import JOB_LABEL

                    body = next(
                        t for t in api.trainjobs("bench")
                        if (t["metadata"].get("labels") or {}).get(JOB_LABEL) == got["again"].id
                    )  # fmt: skip
                    from kubernetes import client as k8s
                    from kubernetes import config as k8s_config

                    custom = k8s.CustomObjectsApi(
                        k8s_config.new_client_from_config(os.environ["KUBECONFIG"])
                    )

                    def create(body=body, i=i, custom=custom, tag="") -> float:
                        fresh = copy.deepcopy(body)
                        fresh["metadata"] = {
                            "name": f"bare-{i}{tag}-{time.monotonic_ns() % 10**9}",
                            "namespace": "bench",
                        }
                        start = time.perf_counter()
                        custom.create_namespaced_custom_object(
                            "trainer.kubeflow.org", "v1alpha1", "bench", "trainjobs", fresh
                        )
                        return time.perf_counter() - start

                samples["bare_create"].append(create())
                upload = bare_uploads(home, "bench", f"{platform}-{i}")
                samples["bare_upload_create"].append(upload + create(tag="u"))
                print(
                    f"  {platform} round {i + 1}/{args.rounds}: first {got['first']:.3f}s "
                    f"({got['puts_first']} PUTs), second {got['second']:.3f}s "
                    f"({got['puts_second']} PUTs), bare create {samples['bare_create'][-1]:.3f}s,"
                    f" bare upload+create {samples['bare_upload_create'][-1]:.3f}s",
                    file=sys.stderr,
                )
            medians = {k: statistics.median(v) for k, v in samples.items()}
            results[platform] = {
                "medians_s": medians,
                "samples_s": samples,
                "puts": put_counts,
                "ratios": {
                    "first_vs_bare_upload_create": medians["first"] / medians["bare_upload_create"],
                    "second_vs_bare_create": medians["second"] / medians["bare_create"],
                },
            }
    finally:
        emu.stop()
        kube.stop()
    result = {
        "folder_mb": args.folder_mb,
        "requirements_packages": PACKAGES,
        "rounds": args.rounds,
        "goals_s": {"first": 3.0, "second": 0.3},
        "platforms": results,
    }
    path = save("code_travels", result)
    for platform, r in results.items():
        m = r["medians_s"]
        print(
            f"{platform}: first {m['first']:.3f}s (goal 3.0), second {m['second']:.3f}s "
            f"(goal 0.3; PUTs {r['puts']['second']}), bare create {m['bare_create']:.3f}s, "
            f"bare upload+create {m['bare_upload_create']:.3f}s"
        )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
