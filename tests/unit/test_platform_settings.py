"""Each platform's ``[backends.NAME]`` table is a pydantic model, and every problem with one
reads ``[backends.NAME] PATH: PROBLEM; FIX`` (nbscale/backends/settings_base.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from nbscale.backends.images import kernel_versions
from nbscale.backends.kubeflow.settings import KubeflowSettings
from nbscale.backends.kubeflow.settings import settings as kubeflow_settings
from nbscale.backends.local.settings import LocalSettings
from nbscale.backends.local.settings import settings as local_settings
from nbscale.backends.sagemaker.settings import SageMakerSettings
from nbscale.backends.sagemaker.settings import settings as sagemaker_settings
from nbscale.backends.settings_base import PlatformSettings, invalid, settings_error, toml_value
from nbscale.config import BackendConfig
from nbscale.errors import SpecError

ROLE = "arn:aws:iam::123456789012:role/nbscale-training"
SAGEMAKER = {"region": "eu-west-1", "role_arn": ROLE, "storage": "s3://my-bucket/nbscale/"}
KUBEFLOW = {"storage": "s3://nbscale/work", "namespace": "team-a"}


def refused(load, name: str, btype: str, table: dict) -> str:
    with pytest.raises(SpecError) as err:
        load(BackendConfig(name, btype, table))
    message = str(err.value)
    assert message.startswith(f"[backends.{name}] "), message
    return message


# -- local ---------------------------------------------------------------------------------
def test_local_takes_its_price_settings_and_an_empty_table():
    assert local_settings(BackendConfig("local", "local", {})) == LocalSettings(name="local")
    box = local_settings(
        BackendConfig("gpu-box", "local", {"gpu_hour_price": 1, "price_per_node_hour": 2.5})
    )
    assert (box.name, box.gpu_hour_price, box.node_hour_price) == ("gpu-box", 1.0, 0.0)
    assert box.price_per_node_hour == 2.5 and isinstance(box.gpu_hour_price, float)


def test_local_refuses_an_unknown_key_listing_the_known_ones():
    message = refused(local_settings, "box", "local", {"gpu_hour_prize": 1.0})
    assert message == (
        "[backends.box] gpu_hour_prize: is not a setting of the local backend; "
        "known settings: gpu_hour_price, node_hour_price, price_per_node_hour"
    )


@pytest.mark.parametrize("value", ["cheap", True, -1])
def test_local_refuses_a_price_that_is_no_price(value):
    message = refused(local_settings, "box", "local", {"node_hour_price": value})
    assert message.startswith("[backends.box] node_hour_price: must be a price in USD >= 0")


# -- kubeflow ------------------------------------------------------------------------------
def test_kubeflow_takes_a_full_table_with_the_types_callers_use():
    s = kubeflow_settings(
        BackendConfig(
            "kf",
            "kubeflow",
            {
                **KUBEFLOW,
                "cpu": 2,
                "memory": "8Gi",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "node_selector": {"nvidia.com/gpu.product": "H100"},
                "image_pull_secrets": ["regcred"],
                "wheelhouse": False,
                "spot_prices": {"g5.xlarge": 0.4},
            },
        )
    )
    assert isinstance(s, KubeflowSettings) and s.name == "kf"
    assert s.cpu == "2" and s.memory == "8Gi" and s.namespace == "team-a"
    assert s.tolerations == ({"key": "nvidia.com/gpu", "operator": "Exists"},)
    assert type(s.tolerations) is tuple and type(s.tolerations[0]) is dict
    assert s.image_pull_secrets == ("regcred",) and s.node_selector == {
        "nvidia.com/gpu.product": "H100"
    }
    assert s.runtime == "torch-distributed" and s.key_secret == "nbscale-keys"
    assert s.storage_options()["storage"] == "s3://nbscale/work"
    with pytest.raises(ValidationError):
        s.storage = "s3://elsewhere"  # frozen


def test_kubeflow_refuses_an_unknown_key_listing_the_known_ones():
    message = refused(kubeflow_settings, "kf", "kubeflow", {**KUBEFLOW, "imagee": "x"})
    assert message.startswith(
        "[backends.kf] imagee: is not a setting of the kubeflow backend; known settings: "
    )
    known = message.split("known settings: ", 1)[1].split(", ")
    assert known == sorted(known) and {"image", "storage", "tolerations"} <= set(known)
    assert "name" not in known  # the table's name is not a setting of it
    assert "name: is not a setting" in refused(
        kubeflow_settings, "kf", "kubeflow", {**KUBEFLOW, "name": "other"}
    )


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"wheelhouse": "yes"}, "[backends.kf] wheelhouse: must be true or false, got 'yes'"),
        ({"image": 3}, "[backends.kf] image: must be a string, got 3"),
        ({"labels": ["a"]}, "[backends.kf] labels: must be a table, got ['a']"),
        ({"tolerations": {"key": "a"}}, "[backends.kf] tolerations: must be a list"),
    ],
)
def test_kubeflow_refuses_a_wrong_type_with_an_example(bad, expected):
    message = refused(kubeflow_settings, "kf", "kubeflow", {**KUBEFLOW, **bad})
    assert message.startswith(expected)
    assert f"; e.g. {next(iter(bad))} = " in message


@pytest.mark.parametrize(
    "bad, path, problem",
    [
        (
            {"tolerations": [{"key": "a", "operator": "Exists", "effect": "Never"}]},
            "tolerations.0.effect",
            "must be 'NoSchedule', 'PreferNoSchedule' or 'NoExecute', got 'Never'",
        ),
        (
            {"spot_tolerations": [{}, {"key": "spot", "when": "always"}]},
            "spot_tolerations.1.when",
            "is not a known key; known keys: effect, key, operator, tolerationSeconds, value",
        ),
        ({"node_selector": {"zone": 1}}, "node_selector.zone", "must be a string, got 1"),
        (
            {"image_pull_secrets": ["ok", "Not_OK"]},
            "image_pull_secrets.1",
            "'Not_OK' is not a Kubernetes object name; use lower-case letters, digits and dashes",
        ),
        ({"spot_prices": {"g5.xlarge": -1}}, "spot_prices.g5.xlarge", "must be a price in USD"),
    ],
)
def test_kubeflow_names_the_path_of_a_nested_bad_value(bad, path, problem):
    message = refused(kubeflow_settings, "kf", "kubeflow", {**KUBEFLOW, **bad})
    assert message.startswith(f"[backends.kf] {path}: {problem}"), message


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"cpu": "lots"}, 'cpu: \'lots\' is not a Kubernetes quantity; e.g. "2", "500m"'),
        ({"storage": "/tmp/x"}, "storage: '/tmp/x' is not an s3:// URI; e.g. s3://bucket/"),
        ({"namespace": "Team_A"}, "namespace: 'Team_A' is not a Kubernetes object name"),
        ({"runtime_kind": "Job"}, "runtime_kind: must be 'ClusterTrainingRuntime' or"),
        ({"configmap_limit": 2**30}, "configmap_limit: at most 921600 bytes fit in a ConfigMap"),
        ({"poll_seconds": -1}, "poll_seconds: must be a number >= 0"),
        ({"spot_discount": 1.0}, "spot_discount: must be the share saved on spot nodes"),
        ({"prices": "cheap"}, "prices: must be a table of instance type = USD per node hour; e.g."),
    ],
)
def test_kubeflow_keeps_every_check_it_had(bad, expected):
    message = refused(kubeflow_settings, "kf", "kubeflow", {**KUBEFLOW, **bad})
    assert message.startswith(f"[backends.kf] {expected}"), message


def test_kubeflow_require_spot_and_storage_still_say_what_to_add():
    bare = kubeflow_settings(BackendConfig("kf", "kubeflow", {}))
    with pytest.raises(SpecError, match="no spot nodes configured.*spot_node_selector"):
        bare.require_spot()
    with pytest.raises(SpecError, match=r"\[backends.kf\] storage: is not set"):
        bare.require_storage("a job")


# -- sagemaker -----------------------------------------------------------------------------
def test_sagemaker_takes_a_valid_table_with_the_types_callers_use(nbscale_home):
    s = sagemaker_settings(
        BackendConfig(
            "aws",
            "sagemaker",
            {
                **SAGEMAKER,
                "subnets": "subnet-1",
                "security_group_ids": ["sg-1"],
                "tags": {"team": "ml"},
                "max_wait": 7200,
                "image": "",
                "poll_seconds": 2,
                "prices": {"ml.g5.xlarge": 1.2},
            },
        )
    )
    assert isinstance(s, SageMakerSettings) and s.name == "aws" and s.region == "eu-west-1"
    assert s.storage == "s3://my-bucket/nbscale" and s.bucket == "my-bucket"
    assert s.prefix == "nbscale" and s.uri("jobs", "j-1") == "s3://my-bucket/nbscale/jobs/j-1"
    assert s.subnets == ("subnet-1",) and s.security_group_ids == ("sg-1",)
    assert s.tags == {"team": "ml"} and s.image is None and s.poll_seconds == 2.0
    assert s.instance_type == "ml.m5.xlarge" and s.key_secret_name == "nbscale/aws/signing-keys"
    # the stock image is the table's entry for the kernel's versions (a user's entry here)
    kernel = kernel_versions()
    table = nbscale_home / "images" / "sagemaker.json"
    table.parent.mkdir(parents=True)
    entry = {"name": "mine", "repository": "pytorch-training", "tag": "mine-{processor}"}
    entry.update(scope="training", torch=kernel.torch, python=kernel.python)
    table.write_text(json.dumps({"entries": [entry]}))
    assert s.training_image("ml.g5.xlarge") == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:mine-gpu"
    )
    assert s.storage_options() == {
        "storage": "s3://my-bucket/nbscale",
        "endpoint_url": None,
        "region": "eu-west-1",
    }


def test_sagemaker_refuses_an_unknown_key_listing_the_known_ones():
    message = refused(sagemaker_settings, "aws", "sagemaker", {**SAGEMAKER, "rol_arn": ROLE})
    assert message.startswith(
        "[backends.aws] rol_arn: is not a setting of the sagemaker backend; known settings: "
        "code_limit_mb, data_capture_percent, endpoint_instance_type, endpoint_url, image, "
    )
    assert "role_arn" in message.split("known settings: ")[1].split(", ")


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"spot": "yes"}, "spot: must be true or false, got 'yes'; e.g. spot = true"),
        ({"volume_size_gb": "30"}, "volume_size_gb: must be a whole number 1..16384, got '30'"),
        ({"retry_attempts": 2.0}, "retry_attempts: must be a whole number 1..30, got 2.0"),
        ({"endpoint_url": 5000}, "endpoint_url: must be a string, got 5000"),
        ({"rollback_alarms": 3}, "rollback_alarms: must be a list of strings; write rollback_"),
    ],
)
def test_sagemaker_refuses_a_wrong_type(bad, expected):
    message = refused(sagemaker_settings, "aws", "sagemaker", {**SAGEMAKER, **bad})
    assert message.startswith(f"[backends.aws] {expected}"), message


@pytest.mark.parametrize(
    "bad, path, problem",
    [
        (
            {"tags": {"team": 1}},
            "tags.team",
            'must be a string, got 1; e.g. tags = { team = "ml" }',
        ),
        (
            {"prices": {"ml.g5.xlarge": "cheap"}},
            "prices.ml.g5.xlarge",
            "must be a price in USD >= 0, got 'cheap'",
        ),
    ],
)
def test_sagemaker_names_the_path_of_a_nested_bad_value(bad, path, problem):
    message = refused(sagemaker_settings, "aws", "sagemaker", {**SAGEMAKER, **bad})
    assert message == f"[backends.aws] {path}: {problem}"


@pytest.mark.parametrize(
    "table, expected",
    [
        (
            {k: v for k, v in SAGEMAKER.items() if k != "role_arn"},
            "role_arn: is missing: SageMaker runs jobs as an IAM role; "
            'add role_arn = "arn:aws:iam::ACCOUNT:role/ROLE" to [backends.aws]',
        ),
        (
            {k: v for k, v in SAGEMAKER.items() if k != "storage"},
            "storage: is missing: bundles, outputs and models go to S3; add storage = ",
        ),
        ({**SAGEMAKER, "role_arn": "admin"}, "role_arn: 'admin' is not an IAM role ARN; write "),
        ({**SAGEMAKER, "storage": "gs://b"}, "storage: 'gs://b' is not an S3 location"),
        ({**SAGEMAKER, "instance_type": "g5"}, "instance_type: 'g5' is not a SageMaker instance"),
        ({**SAGEMAKER, "kms_key_id": ""}, "kms_key_id: must be a KMS key id or ARN"),
        ({**SAGEMAKER, "poll_seconds": True}, "poll_seconds: must be a number of seconds >= 0"),
        ({**SAGEMAKER, "data_capture_percent": 0}, "data_capture_percent: must be a whole number"),
        ({**SAGEMAKER, "wheelhouse": "/nonexistent"}, "wheelhouse: '/nonexistent' is not a folder"),
        (
            {**SAGEMAKER, "subnets": ["subnet-1"]},
            "security_group_ids: is missing: a VPC configuration needs both subnets and "
            "security_group_ids; give both, or neither",
        ),
    ],
)
def test_sagemaker_keeps_every_check_it_had(table, expected):
    message = refused(sagemaker_settings, "aws", "sagemaker", table)
    assert message.startswith(f"[backends.aws] {expected}"), message


def test_sagemaker_region_falls_back_to_boto3s_default_else_says_what_to_add(monkeypatch):
    pytest.importorskip("boto3")
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    table = {k: v for k, v in SAGEMAKER.items() if k != "region"}
    message = refused(sagemaker_settings, "aws", "sagemaker", table)
    assert message == (
        "[backends.aws] region: is missing and boto3 has no default region; add region = "
        '"us-east-1" (or your region) to [backends.aws], or set AWS_REGION'
    )
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert sagemaker_settings(BackendConfig("aws", "sagemaker", table)).region == "ap-south-1"


# -- the shared helper ---------------------------------------------------------------------
def test_every_platform_model_is_a_frozen_strict_platform_settings():
    for model in (LocalSettings, KubeflowSettings, SageMakerSettings):
        assert issubclass(model, PlatformSettings)
        assert model.model_config["extra"] == "forbid" and model.model_config["frozen"] is True
        assert model.platform and "name" not in model.known_settings()


def test_the_error_helper_words_any_model_the_same_way():
    from pydantic import field_validator

    class Thing(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = 1

        @field_validator("size")
        @classmethod
        def _small(cls, value: int) -> int:
            if value > 9:
                raise invalid(f"{value} is too big", "use 9 at most")
            return value

    for data, expected in (
        ({"size": 10}, "[backends.t] size: 10 is too big; use 9 at most"),
        ({"size": "x"}, "[backends.t] size: must be a whole number, got 'x'"),
        ({"colour": "red"}, "[backends.t] colour: is not a setting of the Thing backend"),
    ):
        with pytest.raises(ValidationError) as exc:
            Thing.model_validate(data)
        error = settings_error(Thing, "t", exc.value)
        assert isinstance(error, SpecError) and str(error).startswith(expected), str(error)


def test_examples_are_written_as_toml():
    assert toml_value({"a.b": [1, "x", True], "c": {}}) == '{ "a.b" = [1, "x", true], c = {} }'
