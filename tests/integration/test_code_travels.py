"""What travels with a remote job (issue 19): its folder and its requirements.

Against the AWS emulator (SageMaker, S3 through a recording proxy: every PUT is counted) and
the Kubernetes emulator with moto's S3 (Kubeflow): the folder's ignore rules, the size
limit's one message, content addressing (an unchanged second submit sends nothing), the
warning about modules imported from outside the folder, ``--requirements auto`` pinning the
kernel's versions, and the local backend's refusal of ``--requirements``.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import boto3
import pytest

from nbscale.errors import NbscaleError, SpecError
from nbscale.jobs import submit
from nbscale.specs import Entry, JobSpec
from tests.support.aws_emulator import Emulator
from tests.support.kubeflow import NS, _trainjob
from tests.support.sagemaker import config as sagemaker_config
from tests.support.sagemaker_instances import running_emulator, use_emulator

IMAGE = "registry.example.com/team/nbscale-torch:2.13"  # an image of the team's own


def config(**extra):
    return sagemaker_config(image=IMAGE, **extra)


@pytest.fixture(scope="module")
def emulator():
    yield from running_emulator()


@pytest.fixture
def aws(emulator, monkeypatch):
    return use_emulator(emulator, monkeypatch)


def puts(emu: Emulator) -> list[str]:
    with emu.lock:
        return [path for method, path, _ in emu.bodies if method == "PUT"]


def project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(
        "from model import Net\nprint(open('data/labels.csv').read(), Net)\n"
    )
    (root / "model.py").write_text("class Net:\n    pass\n")
    (root / "data").mkdir()
    (root / "data" / "labels.csv").write_text("a,b\n1,2\n")
    (root / "data" / "raw.bin").write_bytes(b"\0" * 2048)
    (root / "logs").mkdir()
    (root / "logs" / "run.log").write_text("old\n")
    (root / "keep.log").write_text("kept\n")
    (root / "notes.tmp").write_text("scratch\n")
    (root / "sub").mkdir()
    (root / "sub" / "x.tmp").write_text("local rule\n")
    (root / "sub" / "y.txt").write_text("travels\n")
    (root / ".gitignore").write_text("logs/\n*.log\n!keep.log\n")
    (root / "sub" / ".gitignore").write_text("*.tmp\n")
    (root / ".nbscaleignore").write_text("data/raw.bin\n")
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / ".env").write_text("API_TOKEN=never-travels\n")  # credentials stay here
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_ed25519").write_text("key\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"pyc")
    return root


def channels(request: dict) -> dict[str, str]:
    return {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in request["InputDataConfig"]
    }


def s3_object(uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    if key.endswith("/"):
        (found,) = s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]
        key = found["Key"]
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def sent_spec(request: dict) -> dict:
    return json.loads(base64.urlsafe_b64decode(s3_object(channels(request)["spec"])))


def test_the_folder_travels_by_the_ignore_rules_and_once(aws, tmp_path):
    root = project(tmp_path / "proj")
    spec = JobSpec(entry=Entry.from_path(str(root / "train.py")), backend="aws")
    before = len(puts(aws))
    submit(spec, config=config())
    first = puts(aws)[before:]
    request = aws.operations("CreateTrainingJob")[-1]
    code = channels(request)["code"]
    with zipfile.ZipFile(io.BytesIO(s3_object(code))) as zf:
        names = sorted(zf.namelist())
    assert names == [
        ".gitignore", ".nbscaleignore", "data/labels.csv", "keep.log", "model.py",
        "notes.tmp", "sub/.gitignore", "sub/y.txt", "train.py",
    ]  # fmt: skip
    sent = sent_spec(request)
    assert sent["entry"]["target"] == "train.py"  # in the unpacked folder
    assert sent["code"]["uri"] == "/opt/ml/input/data/code/code.zip"
    assert "workdir" not in sent
    assert any("/code/tree/" in p for p in first)

    # unchanged: the folder and the wheels are not sent again (another process too: HEAD)
    from nbscale.backends.remote import staging

    staging._known.clear()
    before = len(puts(aws))
    submit(spec, config=config())
    again = puts(aws)[before:]
    assert not [p for p in again if "/code/" in p], again
    assert channels(aws.operations("CreateTrainingJob")[-1])["code"] == code

    # a changed file: a new name, one new upload
    (root / "model.py").write_text("class Net:\n    size = 2\n")
    before = len(puts(aws))
    submit(spec, config=config())
    changed = [p for p in puts(aws)[before:] if "/code/" in p]
    assert len(changed) == 1
    assert channels(aws.operations("CreateTrainingJob")[-1])["code"] != code


def test_over_the_limit_one_message_names_the_largest_files_and_nothing_is_sent(aws, tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    (root / "train.py").write_text("print('hi')\n")
    (root / "weights.pt").write_bytes(b"\1" * (2 << 20))
    (root / "frames.npy").write_bytes(b"\2" * (1 << 20))
    spec = JobSpec(entry=Entry.from_path(str(root / "train.py")), backend="aws")
    created = len(aws.operations("CreateTrainingJob"))
    before = len(puts(aws))
    with pytest.raises(NbscaleError) as err:
        submit(spec, config=config(code_limit_mb=1))
    text = str(err.value)
    assert "over the 1.0 MB limit" in text and "code_limit_mb in [backends.aws]" in text
    assert text.index("weights.pt (2.0 MB)") < text.index("frames.npy (1.0 MB)")
    assert "object storage" in text and ".nbscaleignore" in text
    assert len(aws.operations("CreateTrainingJob")) == created and puts(aws)[before:] == []


def _tiny_package(root: Path, name: str, version: str = "0.1.0") -> Path:
    """A pure-Python package built here into a wheel (nothing downloaded)."""
    src = root / f"{name}-src"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text(f"VALUE = {name!r}\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(wheels), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    return wheels


def test_requirements_travel_as_a_wheelhouse_built_once(aws, tmp_path):
    root = project(tmp_path / "proj")
    wheels = _tiny_package(tmp_path, "tinydep")
    (root / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\ntinydep==0.1.0\n")
    spec = JobSpec(entry=Entry.from_path(str(root / "train.py")), backend="aws")
    submit(spec, config=config())
    request = aws.operations("CreateTrainingJob")[-1]
    found = channels(request)
    assert "requirements" in found
    with zipfile.ZipFile(io.BytesIO(s3_object(found["requirements"]))) as zf:
        assert sorted(zf.namelist()) == ["requirements.txt", "tinydep-0.1.0-py3-none-any.whl"]
    sent = sent_spec(request)["requirements_wheels"]
    assert sent["uri"] == "/opt/ml/input/data/requirements/requirements.zip"
    assert sent["index"] is False and len(sent["sha256"]) == 64

    # the same requirements: no build (the cache), no upload
    from nbscale.backends.remote import staging

    staging._known.clear()
    before = len(puts(aws))
    submit(spec, config=config())
    assert not [p for p in puts(aws)[before:] if "/requirements/" in p]
    assert (
        channels(aws.operations("CreateTrainingJob")[-1])["requirements"] == found["requirements"]
    )

    # pip_index: only the file travels; the container installs from its own index
    submit(spec, config=config(pip_index=True))
    found_index = channels(aws.operations("CreateTrainingJob")[-1])["requirements"]
    with zipfile.ZipFile(io.BytesIO(s3_object(found_index))) as zf:
        assert zf.namelist() == ["requirements.txt"]


def test_requirements_that_pip_cannot_resolve_are_one_message_before_anything_is_created(
    aws, tmp_path
):
    root = project(tmp_path / "proj")
    (root / "requirements.txt").write_text("--no-index\nno-such-package-nbscale==9.9\n")
    created = len(aws.operations("CreateTrainingJob"))
    with pytest.raises(NbscaleError, match="could not be made into wheels") as err:
        submit(
            JobSpec(entry=Entry.from_path(str(root / "train.py")), backend="aws"), config=config()
        )
    assert "pip_index = true" in str(err.value)
    assert len(aws.operations("CreateTrainingJob")) == created


def test_requirements_auto_pins_the_kernels_versions_of_what_the_job_imports(aws, tmp_path):
    from nbscale.requirements import auto_pins

    root = tmp_path / "auto"
    root.mkdir()
    (root / "train.py").write_text("import yaml\nimport torch\nimport json\nprint(yaml, torch)\n")
    pins = auto_pins(["yaml", "torch", "json", "model"])
    assert pins == [f"PyYAML=={metadata.version('PyYAML')}"]  # torch is the image's
    boto = auto_pins(["boto3"])
    assert f"boto3=={metadata.version('boto3')}" in boto
    assert f"botocore=={metadata.version('botocore')}" in boto  # what it requires, pinned too

    spec = JobSpec(
        entry=Entry.from_path(str(root / "train.py")), backend="aws", requirements="auto"
    )
    submit(spec, config=config())
    request = aws.operations("CreateTrainingJob")[-1]
    with zipfile.ZipFile(io.BytesIO(s3_object(channels(request)["requirements"]))) as zf:
        assert zf.read("requirements.txt").decode() == "\n".join(pins) + "\n"
        assert any(n.lower().startswith("pyyaml-") for n in zf.namelist())


def test_a_module_imported_from_outside_the_folder_is_named_before_submitting(
    aws, tmp_path, capsys, monkeypatch
):
    elsewhere = tmp_path / "shared"
    elsewhere.mkdir()
    (elsewhere / "helpers_outside.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    root = project(tmp_path / "proj")
    (root / "train.py").write_text("import helpers_outside\nfrom model import Net\n")
    submit(JobSpec(entry=Entry.from_path(str(root / "train.py")), backend="aws"), config=config())
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("nbscale: warning:")]
    assert len(warnings) == 1, err
    assert f"helpers_outside ({elsewhere / 'helpers_outside.py'})" in warnings[0]
    assert "model" not in warnings[0].split("from outside")[0].replace("helpers_outside", "")


def test_the_local_backend_refuses_requirements(tmp_path):
    from nbscale.jobs import submit as submit_job

    (tmp_path / "t.py").write_text("print(1)\n")
    (tmp_path / "req.txt").write_text("pyyaml\n")
    with pytest.raises(SpecError) as err:
        submit_job(JobSpec(entry=Entry.from_path(str(tmp_path / "t.py")), requirements="req.txt"))
    assert "requirements" in str(err.value) and "this Python environment" in str(err.value)


def test_a_missing_requirements_file_is_refused_where_it_is_given(tmp_path):
    (tmp_path / "t.py").write_text("print(1)\n")
    with pytest.raises(SpecError, match="requirements: .*nope.txt is not a file"):
        JobSpec(entry=Entry.from_path(str(tmp_path / "t.py")), requirements="nope.txt")


def test_kubeflow_ships_the_cells_folder_through_object_storage_once(cluster, tmp_path):
    """A ``%%train`` cell's folder is the kernel's working folder (the test's): content-
    addressed in object storage, named in the container's spec; no ConfigMap for it."""
    from tests.support.kubeflow import _cell

    (tmp_path / "model.py").write_text("class Net:\n    pass\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.csv").write_text("a,b\n")
    job = _cell().submit()
    body = _trainjob(cluster, job)
    args = body["spec"]["trainer"]["args"]
    spec = json.loads(base64.urlsafe_b64decode(args[args.index("--spec") + 1]))
    code = spec["code"]
    assert code["uri"].startswith("s3://nb-bucket/work/code/tree/")
    with zipfile.ZipFile(io.BytesIO(s3_object(code["uri"]))) as zf:
        names = zf.namelist()
    assert "model.py" in names and "data/labels.csv" in names
    assert not any(n.startswith("nbscale-home") for n in names)  # this machine's home stays
    assert job.record.info["uploaded"] == [code["uri"]]
    again = _cell().submit()
    assert again.record.info["uploaded"] == []  # unchanged: nothing sent
    cm = cluster.core.read_namespaced_config_map(f"{again.record.native_id}-bundle", NS)
    assert list(cm.binary_data) == ["cell.zip"]


def test_a_module_job_takes_its_requirements_too(aws, tmp_path, capsys):
    """``-m module`` runs from the image (no folder travels), but --requirements is honoured,
    never dropped; ``auto`` with nothing to pin says so."""
    wheels = _tiny_package(tmp_path, "tinymod")
    req = tmp_path / "req.txt"
    req.write_text(f"--no-index\n--find-links {wheels}\ntinymod==0.1.0\n")
    submit(
        JobSpec(entry=Entry("module", "trainer.main"), backend="aws", requirements=str(req)),
        config=config(),
    )
    found = channels(aws.operations("CreateTrainingJob")[-1])
    assert "requirements" in found and "code" not in found
    submit(
        JobSpec(entry=Entry("module", "json"), backend="aws", requirements="auto"), config=config()
    )
    assert "requirements" not in channels(aws.operations("CreateTrainingJob")[-1])
    assert "--requirements auto: nothing to pin" in capsys.readouterr().err


def test_a_relative_find_links_is_read_next_to_the_requirements_file(aws, tmp_path, monkeypatch):
    root = project(tmp_path / "proj")
    _tiny_package(tmp_path, "reldep")  # into tmp_path/wheels, next to the project
    (root / "requirements.txt").write_text("--no-index\n--find-links ../wheels\nreldep==0.1.0\n")
    monkeypatch.chdir(tmp_path / "proj" / "data")  # wherever the submit happens from
    submit(JobSpec(entry=Entry.from_path(str(root / "train.py")), backend="aws"), config=config())
    found = channels(aws.operations("CreateTrainingJob")[-1])
    with zipfile.ZipFile(io.BytesIO(s3_object(found["requirements"]))) as zf:
        assert "reldep-0.1.0-py3-none-any.whl" in zf.namelist()
