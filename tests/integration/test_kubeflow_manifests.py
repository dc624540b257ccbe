"""Dry runs through the real nbscale CLI print the exact kubeflow objects (valid against the published
CRDs) and send nothing."""

from __future__ import annotations

import yaml

from nbscale.specs import Entry, JobSpec
from tests.support.kube_schemas import validate


def _yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]  # stdout is the YAML stream alone


def test_dry_runs_print_the_exact_yaml_and_send_nothing(nbscale_cli, nbscale_home, tmp_path):
    nbscale_home.mkdir(parents=True, exist_ok=True)
    (nbscale_home / "config.toml").write_text(
        '[backends.kf]\ntype = "kubeflow"\nstorage = "s3://nb-bucket/work"\nwheelhouse = false\n'
        'namespace = "team-a"\nkubeconfig = "/nonexistent/kubeconfig"\n'
        'image = "registry.example.com/ml/torch:kernel"\n'  # the stock table's is per version
    )
    out = nbscale_cli(
        "run", "-m", "train.main", "--backend", "kf", "--nodes", "2", "--dry-run", check=True
    ).stdout
    docs = _yaml_docs(out)
    assert [d["kind"] for d in docs] == ["TrainJob"]
    for doc in docs:
        validate(doc)
    assert docs[0]["spec"]["trainer"]["numNodes"] == 2

    from tests.support.serving import make_artifact

    art, _ = make_artifact(tmp_path / "art", "digits")
    out = nbscale_cli(
        "deploy",
        str(art),
        "--name",
        "digits",
        "--backend",
        "kf",
        "--replicas",
        "0:2",
        "--scale-metric",
        "rps",
        "--scale-target",
        "50",
        "--gpus",
        "1",
        "--dry-run",
        check=True,
    ).stdout
    docs = _yaml_docs(out)
    assert [d["kind"] for d in docs] == ["InferenceService"]
    for doc in docs:
        validate(doc)
    pred = docs[0]["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"], pred["scaleMetric"]) == (0, 2, "rps")
    assert pred["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # nothing was stored: no job, no endpoint
    assert "no endpoints" in nbscale_cli("endpoints", check=True).stdout
    # %%train --dry-run shows the same objects
    from nbscale.celljob import prepare_cell

    spec = JobSpec(entry=Entry("module", "placeholder"), name="cell", backend="kf")
    prepared = prepare_cell("y = x + 1", {"x": 1}, spec, outputs=["y"])
    docs = _yaml_docs(prepared.dry_run().plan().text())
    assert [d["kind"] for d in docs] == ["TrainJob", "ConfigMap"]
    for doc in docs:
        validate(doc)
    assert not prepared.bundle_path.exists()
