"""Issue 19: the stock image follows the kernel's versions, the node's GPUs are used, and the
backend's region is everywhere (SageMaker requests, pipeline steps).

The shipped tables are checked against the SageMaker SDK's own data in
tests/contract/test_image_table.py; here the choice, the refusal, a user's own entries,
the GPU shapes and the region of every image."""

from __future__ import annotations

import json

import pytest

from nbscale.backends import images
from nbscale.backends.images import Versions, kernel_versions
from nbscale.backends.kubeflow import images as kf_images
from nbscale.backends.kubeflow import manifests as mf
from nbscale.backends.kubeflow.settings import settings as kf_settings
from nbscale.backends.sagemaker import images as sm_images
from nbscale.backends.sagemaker import request as req
from nbscale.backends.sagemaker.pipeline_compile import definition
from nbscale.backends.sagemaker.settings import settings as sm_settings
from nbscale.config import BackendConfig
from nbscale.errors import SpecError
from nbscale.pipelines.model import Pipeline, Resources, Step
from nbscale.specs import Entry, JobSpec

ROLE = "arn:aws:iam::123456789012:role/nbscale-training"


def sagemaker(region="us-east-1", **extra):
    return sm_settings(
        BackendConfig(
            "aws",
            "sagemaker",
            {"region": region, "role_arn": ROLE, "storage": "s3://nb-bucket/p", **extra},
        )
    )


def user_table(home, platform: str, data: dict) -> None:
    path = home / "images" / f"{platform}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def spec(**fields) -> dict:
    return JobSpec(entry=Entry("module", "train"), name="fit", **fields).to_dict()


# -- the choice of image ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "account", "domain"),
    [
        ("us-east-1", "763104351884", "amazonaws.com"),
        ("af-south-1", "626614931356", "amazonaws.com"),
        ("me-south-1", "217643126080", "amazonaws.com"),
        ("cn-north-1", "727897471807", "amazonaws.com.cn"),
    ],
)
def test_the_sagemaker_image_has_the_kernels_versions_and_the_regions_registry(
    region, account, domain
):
    cpu = sm_images.stock_image("training", region, False, "image", Versions("2.5", "3.11"))
    assert cpu == f"{account}.dkr.ecr.{region}.{domain}/pytorch-training:2.5.1-cpu-py311"
    gpu = sm_images.stock_image("training", region, True, "image", Versions("2.8", "3.12"))
    assert gpu == f"{account}.dkr.ecr.{region}.{domain}/pytorch-training:2.8.0-gpu-py312"


def test_no_image_for_the_versions_is_one_refusal_naming_the_nearest_and_the_setting():
    with pytest.raises(SpecError) as err:
        sm_images.stock_image(
            "training", "eu-west-1", True, 'image = "..."', Versions("2.13", "3.11")
        )
    text = str(err.value)
    assert "\n" not in text and text.startswith("image: no SageMaker PyTorch training image")
    assert "in eu-west-1 has the kernel's torch 2.13 and Python 3.11 (gpu)" in text
    # the nearest torch, and the nearest on the kernel's Python
    assert "pytorch-training:2.10.0-gpu-py313 (torch 2.10, Python 3.13, gpu)" in text
    assert "pytorch-training:2.5.1-gpu-py311 (torch 2.5, Python 3.11, gpu)" in text
    assert 'set image = "..."' in text and "images/sagemaker.json" in text
    # a Python the table has for no torch near it: the same refusal on Kubeflow
    with pytest.raises(SpecError, match=r"no pytorch/pytorch image has the kernel's torch 2\.13"):
        kf_images.stock_image(False, "kf", Versions("2.13", "3.11"))


def test_a_region_an_image_is_not_published_in_is_refused():
    # pytorch-training 2.5.1 is not in me-west-1 (the SDK's registries for that version)
    with pytest.raises(SpecError, match="in me-west-1 has the kernel's torch 2.5"):
        sm_images.stock_image("training", "me-west-1", False, "image", Versions("2.5", "3.11"))
    assert "me-west-1" in sm_images.stock_image(
        "training", "me-west-1", False, "image", Versions("2.9", "3.12")
    )


def test_a_users_table_adds_images_and_instance_types(nbscale_home):
    kernel = kernel_versions()
    user_table(
        nbscale_home,
        "sagemaker",
        {
            "entries": [
                {
                    "name": "ours",
                    "scope": "training",
                    "uri": "111122223333.dkr.ecr.{region}.amazonaws.com/torch:{processor}",
                    "torch": kernel.torch,
                    "python": kernel.python,
                    "processors": ["gpu"],
                }
            ],
            "instances": {"ml.g7.xlarge": {"gpus": 2}},
        },
    )
    s = sagemaker("eu-west-1")
    assert s.training_image("ml.g7.xlarge") == (
        "111122223333.dkr.ecr.eu-west-1.amazonaws.com/torch:gpu"
    )
    assert sm_images.node("ml.g7.xlarge").gpus == 2
    # the shipped entries are still there
    assert "pytorch-training:2.9.0-cpu-py312" in sm_images.stock_image(
        "training", "eu-west-1", False, "image", Versions("2.9", "3.12")
    )
    user_table(
        nbscale_home,
        "kubeflow",
        {
            "entries": [
                {"name": "k", "image": "reg/t:1", "torch": kernel.torch, "python": kernel.python}
            ]
        },
    )
    assert mf.image_of(spec(), kf_settings(BackendConfig("kf", "kubeflow", {}))) == "reg/t:1"


def test_a_broken_user_table_is_one_message(nbscale_home):
    (nbscale_home / "images").mkdir(parents=True)
    (nbscale_home / "images" / "sagemaker.json").write_text("{not json")
    with pytest.raises(Exception, match=r"sagemaker\.json is not a JSON image table"):
        sm_images.table()
    (nbscale_home / "images" / "sagemaker.json").write_text('{"entries": [{"torch": "2.5"}]}')
    with pytest.raises(Exception, match="'entries' must be a list of objects, each with a name"):
        sm_images.table()


def test_the_job_refusal_happens_in_validation_before_anything_is_built(monkeypatch):
    """validate() calls check_spec before any upload (tests/integration/test_gpu_shapes.py
    sees nothing sent); an own image skips the table (the container checks it instead)."""
    monkeypatch.setattr(images, "kernel_versions", lambda: Versions("2.13", "3.11"))
    s = sagemaker()
    with pytest.raises(SpecError, match="^image: no SageMaker PyTorch training image"):
        req.check_spec(spec(), s)
    req.check_spec(spec(image="123456789012.dkr.ecr.us-east-1.amazonaws.com/mine:1"), s)
    conf = kf_settings(BackendConfig("kf", "kubeflow", {}))
    with pytest.raises(SpecError, match="^image: no pytorch/pytorch image"):
        mf.image_of(spec(), conf)
    assert mf.image_of(spec(image="r/t:1"), conf) == "r/t:1"


# -- the hardware is used -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance", "gpus", "fabric"),
    [
        ("ml.m5.xlarge", 0, {}),
        ("ml.g5.xlarge", 1, {}),
        ("ml.g5.12xlarge", 4, {"FI_PROVIDER": "efa"}),
        (
            "ml.p4d.24xlarge",
            8,
            {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "RDMAV_FORK_SAFE": "1"},
        ),
    ],
)
def test_a_sagemaker_node_runs_one_process_per_gpu(instance, gpus, fabric):
    s = sagemaker(image="123456789012.dkr.ecr.us-east-1.amazonaws.com/mine:1")
    resolved = req.resolve(spec(instance_type=instance), s)
    assert resolved["procs_per_node"] == max(1, gpus)
    assert resolved["gpus_per_proc"] == (1 if gpus else 0)
    request = req.build("fit-1", resolved, s, req.Staged(None, "s3://nb-bucket/p/specs/x/"))
    assert request["ResourceConfig"]["InstanceType"] == instance
    env = request["Environment"]
    assert {k: v for k, v in env.items() if k.startswith(("FI_", "RDMAV_"))} == fabric
    if gpus == 8:  # two GPUs a process: four processes; asking for more is refused
        assert req.resolve(spec(instance_type=instance, gpus_per_proc=2), s)["procs_per_node"] == 4
        with pytest.raises(SpecError, match=r"procs_per_node: 5 processes x 2 GPUs need 10 GPUs"):
            req.resolve(spec(instance_type=instance, gpus_per_proc=2, procs_per_node=5), s)
    if gpus == 1:
        with pytest.raises(
            SpecError, match="gpus_per_proc: 2 GPUs per process, but ml.g5.xlarge has 1"
        ):
            req.resolve(spec(instance_type=instance, gpus_per_proc=2), s)


@pytest.mark.parametrize("instance", ["ml.trn1.32xlarge", "ml.inf2.xlarge", "ml.trn2.48xlarge"])
def test_trainium_and_inferentia_are_refused_at_submit(instance):
    with pytest.raises(SpecError, match=f"instance_type: {instance} has AWS (Trainium|Inferentia)"):
        req.check_spec(spec(instance_type=instance), sagemaker(image="x/y:1"))
    with pytest.raises(SpecError, match="has AWS (Trainium|Inferentia)"):
        mf.resolve(
            spec(instance_type=instance.removeprefix("ml.")),
            kf_settings(BackendConfig("kf", "kubeflow", {})),
        )


@pytest.mark.parametrize(
    ("node", "gpus"), [("g5.xlarge", 1), ("g5.12xlarge", 4), ("p4d.24xlarge", 8)]
)
def test_a_trainjob_asks_for_the_nodes_gpus_and_runs_one_process_each(node, gpus):
    conf = kf_settings(BackendConfig("kf", "kubeflow", {"storage": "s3://b/w", "image": "r/t:1"}))
    staged = mf.Staged(job_id="fit-1", spec_b64="e30", outputs_uri="s3://b/w/out")
    body = mf.trainjob("fit-1", spec(instance_type=node, gpus_per_proc=1), conf, staged, "ns")
    trainer = body["spec"]["trainer"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == str(gpus)
    assert trainer["numProcPerNode"] == gpus
    # without a known node type the job asks for procs x gpus_per_proc, as before
    body = mf.trainjob("fit-1", spec(procs_per_node=3, gpus_per_proc=2), conf, staged, "ns")
    assert body["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "6"
    assert body["spec"]["trainer"]["numProcPerNode"] == 3


# -- regions everywhere ----------------------------------------------------------------------------


def test_pipeline_steps_get_the_image_of_the_pipelines_region(nbscale_home, tmp_path):
    kernel = kernel_versions()
    py = kernel.python.replace(".", "")
    user_table(  # the DLC tag scheme for this kernel's versions, in every region
        nbscale_home,
        "sagemaker",
        {
            "entries": [
                {
                    "name": "kernel",
                    "scope": "training",
                    "repository": "pytorch-training",
                    "torch": kernel.torch,
                    "python": kernel.python,
                    "tag": f"{kernel.torch}-{{processor}}-py{py}",
                }
            ]
        },
    )
    nb = str(tmp_path / "flow.ipynb")
    pipeline = Pipeline(
        name="flow",
        source=nb,
        kind="tagged",
        directory=str(tmp_path),
        steps={
            "prep": Step(name="prep", notebook=nb),
            "fit": Step(name="fit", notebook=nb, resources=Resources(gpu=1)),
        },
    )
    found = definition(pipeline, role=ROLE, region="af-south-1")
    uris = {s["Name"]: s["Arguments"]["AppSpecification"]["ImageUri"] for s in found["Steps"]}
    base = f"626614931356.dkr.ecr.af-south-1.amazonaws.com/pytorch-training:{kernel.torch}"
    assert uris == {"prep": f"{base}-cpu-py{py}", "fit": f"{base}-gpu-py{py}"}


def test_the_pipeline_backend_compiles_for_its_own_region(nbscale_home, monkeypatch, tmp_path):
    from nbscale.backends.sagemaker import pipelines as smp

    seen = {}

    def compile_pipeline(pipeline, output, **options):
        seen.update(options)
        raise SpecError("stop", "here")

    monkeypatch.setattr(
        "nbscale.backends.sagemaker.pipeline_compile.compile_pipeline", compile_pipeline
    )
    monkeypatch.setattr(
        "nbscale.pipelines.loader.load",
        lambda path: Pipeline(name="p", source=path, kind="yaml", directory=".", steps={}),
    )
    runner = smp.SageMakerPipelines(sagemaker("ap-east-1"))
    monkeypatch.setattr(runner.settings.__class__, "require_credentials", lambda self: None)
    with pytest.raises(SpecError, match="stop"):
        runner.create(str(tmp_path / "flow.py"))
    assert seen["region"] == "ap-east-1"


def test_major_minor_reads_local_versions():
    assert images.major_minor("2.13.0+cpu") == "2.13"
    assert images.major_minor("3.11") == "3.11"
    assert images.major_minor("2") == "2.0"


def test_a_budget_is_priced_in_the_backends_region():
    """--max-cost becomes a runtime at the price of the backend's region: nbscale's list
    prices are per region, so a region the table lacks needs its own price."""
    job = spec(max_cost=0.46, nodes=2)
    assert req.budget_runtime(job, sagemaker("us-east-1")) == 3600  # ml.m5.xlarge at $0.23
    # eu-west-1's own list price ($0.257) is shipped
    assert req.budget_runtime(job, sagemaker("eu-west-1")) == int(0.46 / (2 * 0.257) * 3600)
    with pytest.raises(SpecError) as err:
        req.budget_runtime(job, sagemaker("us-west-2"))
    assert str(err.value).startswith(
        "max_cost: the budget cannot be priced: ml.m5.xlarge is priced at its us-east-1 list "
        "price, and us-west-2's may differ"
    )
    assert 'set prices = { "ml.m5.xlarge" = USD_PER_HOUR }' in str(err.value)
    priced = sagemaker("us-west-2", prices={"ml.m5.xlarge": 0.115})
    assert req.budget_runtime(job, priced) == 7200


def test_an_estimate_in_another_region_says_whose_price_it_is(tmp_path, monkeypatch):
    """The engine's estimate (--dry-run, the %%train report) in a region the table lacks
    (us-west-2) uses the us-east-1 list price only with a note; a budget there is refused
    before submit."""
    from nbscale.config import load
    from nbscale.cost import check_budget, describe_estimate

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nbscale.toml").write_text(
        '[backends.eu]\ntype = "sagemaker"\nregion = "us-west-2"\n'
        '[backends.us]\ntype = "sagemaker"\nregion = "us-east-1"\n'
    )
    config = load()
    shown = describe_estimate(check_budget({"backend": "eu", "nodes": 1}, config))
    assert "ml.m5.xlarge is priced at its us-east-1 list price, and us-west-2's may differ" in shown
    assert "note" not in describe_estimate(check_budget({"backend": "us"}, config))
    assert "list price" not in describe_estimate(check_budget({"backend": "us"}, config))
    with pytest.raises(SpecError, match="the budget cannot be priced"):
        check_budget({"backend": "eu", "max_cost": 5.0, "max_runtime": 60}, config)


def test_a_sagemaker_endpoint_needs_the_nbscale_serving_image(tmp_path):
    """The stock SageMaker PyTorch inference images hold no nbscale and no recent torch:
    they are no default (issue 19); serving_image or --image is asked for by name."""
    from nbscale.backends.endpoint_base import DeployRequest
    from nbscale.backends.sagemaker.endpoints import SageMakerEndpoints
    from nbscale.store import get_store

    backend = SageMakerEndpoints(
        BackendConfig(
            "aws",
            "sagemaker",
            {"region": "eu-west-1", "role_arn": ROLE, "storage": "s3://nb-bucket/p"},
        ),  # fmt: skip
        get_store(),
    )
    request = DeployRequest("digits", tmp_path, 1, 1)
    with pytest.raises(SpecError) as err:
        backend.validate(request)
    assert str(err.value).startswith(
        "image: a SageMaker endpoint runs the nbscale serving image, and none is set"
    )
    assert 'serving_image = "ACCOUNT.dkr.ecr.eu-west-1.amazonaws.com/nbscale-serving:TAG"' in (
        str(err.value)
    )
    backend.validate(DeployRequest("digits", tmp_path, 1, 1, options={"image": "r/serve:1"}))
