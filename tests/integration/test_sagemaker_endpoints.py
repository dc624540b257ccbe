"""SageMaker endpoints through the endpoint backend interface, against the local AWS.

The model artifact is real (packaged from a torch model and signed); InvokeEndpoint
reaches a real nbscale serving process standing in for the container SageMaker runs.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import boto3
import numpy as np
import pytest

from nbscale import keys
from nbscale.backends.endpoint_base import DeployRequest
from nbscale.endpoints import deploy, endpoint, endpoints
from nbscale.errors import NbscaleError, SpecError
from nbscale.store import get_store
from tests.support.emulators import PLANTED_SECRET
from tests.support.sagemaker import backend, nbscale_resources
from tests.support.serving import AUTH, Server, forward, make_artifact


@pytest.fixture
def container(tmp_path):
    """The serving container SageMaker would start for the endpoint: a real server."""
    started = []

    def start(model_dir: Path) -> Server:
        server = Server(model_dir, tmp_path).wait_ready()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_deploy_predict_scale_metrics_and_undeploy_leave_nothing_billing(
    aws, tmp_path, container, capsys, nbscale_cli
):
    artifact, model = make_artifact(tmp_path / "artifact", name="digits")
    ep = deploy(artifact, name="digits", replicas=(1, 3), backend="aws")
    assert ep.record.backend_type == "sagemaker" and ep.status == "READY"
    assert ep.record.replicas == 1
    assert "endpoint digits: Creating" in capsys.readouterr().err  # progress while waiting

    model_req = aws.operations("CreateModel")[-1]
    assert model_req["ModelName"] == "nbscale-digits-v1"
    assert model_req["ExecutionRoleArn"].endswith("role/nbscale-serving")
    container_def = model_req["PrimaryContainer"]
    assert container_def["Image"].endswith("nbscale-serving:0.1.0")
    assert container_def["ModelDataUrl"].startswith("s3://nb-models/serve/models/sha256/")
    arn = container_def["Environment"]["NBSCALE_KEY_SECRET_ARN"]
    assert json.loads(
        boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    ) == {"model": keys.load("model").hex()}
    config_req = aws.operations("CreateEndpointConfig")[-1]
    assert config_req["ProductionVariants"] == [
        {
            "VariantName": "AllTraffic",
            "ModelName": "nbscale-digits-v1",
            "InstanceType": "ml.m5.large",
            "InitialInstanceCount": 1,
            "InitialVariantWeight": 1.0,
        }
    ]
    assert aws.operations("CreateEndpoint")[-1]["EndpointConfigName"] == "nbscale-digits-v1"
    # what is in S3 is the artifact, byte for byte, as SageMaker will unpack it
    bucket, _, key = container_def["ModelDataUrl"].removeprefix("s3://").partition("/")
    boto3.client("s3").download_file(bucket, key, str(tmp_path / "model.tar.gz"))
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == sorted(str(p.relative_to(artifact)) for p in artifact.rglob("*") if p.is_file())

    # autoscaling: target tracking on invocations per instance
    aas = boto3.client("application-autoscaling")
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][-1]
    assert target["ResourceId"] == "endpoint/digits/variant/AllTraffic"
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    policy = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][-1]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert (
        tracking["PredefinedMetricSpecification"]["PredefinedMetricType"]
        == "SageMakerVariantInvocationsPerInstance"
    )
    assert (tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (300, 60)
    ep.scale(2, 5)
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][-1]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 5)
    assert endpoint("digits").record.max_replicas == 5

    # predict: InvokeEndpoint reaches the container
    server = container(artifact)
    aws.attach("digits", f"http://127.0.0.1:{server.port}", AUTH)
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    np.testing.assert_allclose(ep.predict(x), forward(model, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(SpecError, match="refused the input"):
        ep.predict(np.zeros((2, 3), dtype=np.float32))

    # metrics from CloudWatch, under SageMaker's names
    cw = boto3.client("cloudwatch")
    dims = [
        {"Name": "EndpointName", "Value": "digits"},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]
    cw.put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {"MetricName": "Invocations", "Dimensions": dims, "Value": 40.0},
            {"MetricName": "Invocation4XXErrors", "Dimensions": dims, "Value": 2.0},
            {"MetricName": "Invocation5XXErrors", "Dimensions": dims, "Value": 0.0},
            {"MetricName": "ModelLatency", "Dimensions": dims, "Value": 900.0},
            {"MetricName": "OverheadLatency", "Dimensions": dims, "Value": 100.0},
        ],
    )
    m = ep.metrics()
    assert m["Invocations"] == 40.0 and m["Invocation4XXErrors"] == 2.0
    assert m["ModelLatency_p99"] == 900.0 and m["OverheadLatency_p50"] == 100.0
    assert m["error_rate"] == pytest.approx(0.05)
    assert m["sagemaker_series"] and m["latency_unit"] == "microseconds"

    # the CLI lists it with its SageMaker URL, and undeploys it
    listed = json.loads(nbscale_cli("endpoints", "--json", check=True).stdout)
    assert [(e["name"], e["backend"], e["status"]) for e in listed] == [("digits", "aws", "READY")]
    assert listed[0]["url"].endswith("/endpoints/digits/invocations")

    # undeploy: endpoint, config, model, scaling policy and target all gone
    assert nbscale_resources("digits")["endpoints"] == ["digits"]
    nbscale_cli("undeploy", "digits", check=True)
    assert nbscale_resources("digits") == {
        k: [] for k in ("models", "configs", "endpoints", "targets", "policies")
    }
    assert [e.name for e in endpoints()] == []
    assert json.loads(nbscale_cli("endpoints", "--json", check=True).stdout) == []
    # no key, no credential in any request
    key_hex = keys.load("model").hex().encode()
    for _, _, body in aws.bodies:
        assert PLANTED_SECRET.encode() not in body
        assert key_hex not in body or b"SecretString" in body


def test_a_new_version_goes_blue_green_with_canary_and_rollback_alarms(aws, tmp_path):
    artifact, _ = make_artifact(tmp_path / "v1", name="fraud")
    be = backend()
    be.deploy(DeployRequest("fraud", artifact, 1, 2, None, {}, {"rollback_alarms": ["fraud-5xx"]}))
    v2, _ = make_artifact(tmp_path / "v2", name="fraud")
    (v2 / "extra.txt").write_text("v2")  # a different artifact, signed again
    from nbscale.serving.artifact import sign

    sign(v2)
    rec = be.deploy_version(
        "fraud", v2, {"deployment": "canary", "canary_percent": 20, "wait_seconds": 120}
    )
    assert rec.status == "READY"
    update = aws.operations("UpdateEndpoint")[-1]
    assert update["EndpointConfigName"] == "nbscale-fraud-v2"
    assert update["DeploymentConfig"] == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "WaitIntervalInSeconds": 120,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20},
            },
            "TerminationWaitInSeconds": 120,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "fraud-5xx"}]},
    }
    assert (
        aws.operations("CreateModel")[-1]["PrimaryContainer"]["ModelDataUrl"]
        != aws.operations("CreateModel")[-2]["PrimaryContainer"]["ModelDataUrl"]
    )
    # nbscale.endpoints.deploy asks for a new version with canary_traffic_percent
    deploy(v2, name="fraud", backend="aws", options={"canary_traffic_percent": 30})
    canary = aws.operations("UpdateEndpoint")[-1]["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert canary["TrafficRoutingConfiguration"]["CanarySize"]["Value"] == 30
    assert aws.operations("UpdateEndpoint")[-1]["EndpointConfigName"] == "nbscale-fraud-v3"
    be.deploy_version("fraud", v2, {"deployment": "linear", "canary_percent": 25})
    linear = aws.operations("UpdateEndpoint")[-1]["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert linear["TrafficRoutingConfiguration"]["LinearStepSize"] == {
        "Type": "CAPACITY_PERCENT",
        "Value": 25,
    }
    be.undeploy("fraud")
    assert nbscale_resources("fraud") == {
        k: [] for k in ("models", "configs", "endpoints", "targets", "policies")
    }


def test_serverless_has_no_instances_no_autoscaling_and_no_capture(aws, tmp_path):
    artifact, _ = make_artifact(tmp_path / "a", name="tiny")
    be = backend()
    request = DeployRequest(
        "tiny",
        artifact,
        0,
        1,
        None,
        {},
        {"serverless": True, "memory_size_mb": 3072, "max_concurrency": 8},
    )
    shown = json.loads(be.render(request).text())  # --dry-run: the exact requests, nothing sent
    assert "CreateEndpoint" in shown and not nbscale_resources("tiny")["models"]
    be.deploy(request)
    sent = dict(aws.operations("CreateEndpointConfig")[-1])
    variant = sent["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 8}
    assert "InstanceType" not in variant and "DataCaptureConfig" not in sent
    assert "VpcConfig" not in aws.operations("CreateModel")[-1]
    shown["CreateEndpointConfig"].pop("Tags")
    sent.pop("Tags")
    assert shown["CreateEndpointConfig"] == sent
    assert nbscale_resources("tiny")["targets"] == []
    with pytest.raises(SpecError, match="scales by itself"):
        be.scale(get_store_record("tiny"), 1, 2)
    be.undeploy("tiny")
    assert nbscale_resources("tiny") == {
        k: [] for k in ("models", "configs", "endpoints", "targets", "policies")
    }


@pytest.mark.parametrize(
    ("config", "options", "match"),
    [
        ({}, {"data_capture_percent": 25}, "no data capture"),
        ({"capture_rate": 0.5}, {}, "no data capture"),  # deploy(baseline=...) turns it on
        ({}, {"instance_type": "ml.m5.large"}, "instance-type: a serverless endpoint"),
        ({}, {"instances": 2}, "instances: a serverless endpoint"),
        ({}, {"memory_size_mb": 1000}, "memory-mb"),
        ({}, {"max_concurrency": 201}, "max-concurrency"),
    ],
)
def test_serverless_refuses_what_sagemaker_refuses_before_sending(
    aws, tmp_path, config, options, match
):
    artifact, _ = make_artifact(tmp_path / "a", name="srv")
    calls = len(aws.calls)
    request = DeployRequest("srv", artifact, 0, 1, None, config, {"serverless": True, **options})
    with pytest.raises(SpecError, match=match):
        backend().deploy(request)
    with pytest.raises(SpecError, match=match):
        backend().render(request)
    assert len(aws.calls) == calls and get_store().query_one("SELECT 1 FROM endpoints") is None


def test_a_serverless_endpoint_is_refused_in_a_vpc(aws, tmp_path):
    toml = tmp_path / "nbscale.toml"
    toml.write_text(
        toml.read_text() + 'subnets = ["subnet-0123"]\nsecurity_group_ids = ["sg-0123"]\n'
    )
    artifact, _ = make_artifact(tmp_path / "a", name="vpc")
    calls = len(aws.calls)
    with pytest.raises(SpecError, match="cannot run in a VPC"):
        backend().deploy(DeployRequest("vpc", artifact, 0, 1, None, {}, {"serverless": True}))
    assert len(aws.calls) == calls
    # with instances, the model runs in the VPC
    backend().deploy(DeployRequest("vpc", artifact, 1, 1, None, {}, {}))
    assert aws.operations("CreateModel")[-1]["VpcConfig"] == {
        "Subnets": ["subnet-0123"],
        "SecurityGroupIds": ["sg-0123"],
    }
    backend().undeploy("vpc")


def test_the_emulator_refuses_what_sagemaker_refuses(aws):
    """The front answers as SageMaker does, whatever nbscale sends: a ValidationException for
    an image of another region, and for a serverless variant with capture or a VPC model."""
    from botocore.exceptions import ClientError

    sm = boto3.client("sagemaker")
    role = "arn:aws:iam::123456789012:role/nbscale-serving"
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nbscale-serving:0.1.0"
    with pytest.raises(ClientError) as err:
        sm.create_model(
            ModelName="far",
            ExecutionRoleArn=role,
            PrimaryContainer={"Image": image.replace("us-east-1", "eu-west-1")},
        )
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "Cross region ECR image pulls are not allowed" in str(err.value)
    sm.create_model(ModelName="plain", ExecutionRoleArn=role, PrimaryContainer={"Image": image})
    sm.create_model(
        ModelName="in-vpc",
        ExecutionRoleArn=role,
        PrimaryContainer={"Image": image},
        VpcConfig={"Subnets": ["subnet-0123"], "SecurityGroupIds": ["sg-0123"]},
    )
    serverless = {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    capture = {
        "InitialSamplingPercentage": 100,
        "DestinationS3Uri": "s3://nb-models/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}],
    }
    for model, extra in (("plain", {"DataCaptureConfig": capture}), ("in-vpc", {})):
        with pytest.raises(ClientError) as err:
            sm.create_endpoint_config(
                EndpointConfigName=f"cfg-{model}",
                ProductionVariants=[
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": model,
                        "ServerlessConfig": serverless,
                    }
                ],
                **extra,
            )
        assert err.value.response["Error"]["Code"] == "ValidationException"
    assert not [
        c
        for c in sm.list_endpoint_configs()["EndpointConfigs"]
        if c["EndpointConfigName"].startswith("cfg-")
    ]
    for model in ("plain", "in-vpc"):
        sm.delete_model(ModelName=model)


def get_store_record(name):
    from nbscale.store.endpoints import get_endpoint

    return get_endpoint(get_store(), name)


def test_bad_requests_are_refused_before_anything_is_created(aws, tmp_path):
    artifact, _ = make_artifact(tmp_path / "a", name="bad")
    be = backend()
    calls = len(aws.calls)
    with pytest.raises(SpecError, match="at least one instance"):
        be.deploy(DeployRequest("bad", artifact, 0, 2, None, {}, {}))
    with pytest.raises(SpecError, match="does not use it"):
        be.deploy(DeployRequest("bad", artifact, 1, 2, None, {}, {"gpus": 1}))
    # the local router's direct serving has no meaning behind SageMaker's own front end
    with pytest.raises(SpecError, match="direct: the sagemaker endpoint backend does not use it"):
        be.deploy(DeployRequest("bad", artifact, 1, 2, None, {}, {"direct": True}))
    with pytest.raises(SpecError, match="1024, 2048"):
        be.deploy(
            DeployRequest(
                "bad", artifact, 0, 1, None, {}, {"serverless": True, "memory_size_mb": 1000}
            )
        )
    assert len(aws.calls) == calls and get_store().query_one("SELECT 1 FROM endpoints") is None


def test_an_endpoint_that_fails_to_start_leaves_nothing(aws, tmp_path):
    artifact, _ = make_artifact(tmp_path / "a", name="broken")
    aws.fail_next_endpoint = "The primary container for production variant AllTraffic did not pass the ping health check."
    with pytest.raises(NbscaleError, match="did not pass the ping health check"):
        backend().deploy(DeployRequest("broken", artifact, 1, 1, None, {}, {}))
    assert nbscale_resources("broken") == {
        k: [] for k in ("models", "configs", "endpoints", "targets", "policies")
    }
    assert get_store().query_one("SELECT 1 FROM endpoints WHERE name = 'broken'") is None


def _version(tmp_path, name: str, tag: str) -> Path:
    """Another signed artifact of the same endpoint (different bytes)."""
    from nbscale.serving.artifact import sign

    art, _ = make_artifact(tmp_path / tag, name=name)
    (art / "version.txt").write_text(tag)
    sign(art)
    return art


def test_a_version_sagemaker_rolled_back_is_rolled_back_and_the_record_keeps_the_old_one(
    aws, tmp_path, nbscale_cli
):
    cw = boto3.client("cloudwatch")
    cw.put_metric_alarm(
        AlarmName="guard-5xx",
        Namespace="AWS/SageMaker",
        MetricName="Invocation5XXErrors",
        Dimensions=[
            {"Name": "EndpointName", "Value": "guard"},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    v1 = _version(tmp_path, "guard", "v1")
    be = backend()
    be.deploy(DeployRequest("guard", v1, 1, 2, None, {}, {"rollback_alarms": ["guard-5xx"]}))
    # the new fleet errs: the alarm fires during the baking period, SageMaker rolls back
    cw.set_alarm_state(AlarmName="guard-5xx", StateValue="ALARM", StateReason="5xx on green")
    v2 = _version(tmp_path, "guard", "v2")
    rec = be.deploy_version("guard", v2, {"deployment": "canary", "canary_percent": 10})
    assert rec.status == "ROLLED_BACK"
    assert "guard-5xx" in rec.error and "version 2 was rolled back" in rec.error
    assert rec.model_dir == str(v1) and rec.config["sagemaker"]["versions"] == [1]
    assert "pending" not in rec.config["sagemaker"]
    # the rolled-back version's model and config are gone; the old ones serve
    assert nbscale_resources("guard")["configs"] == ["nbscale-guard-v1"]
    assert nbscale_resources("guard")["models"] == ["nbscale-guard-v1"]
    desc = boto3.client("sagemaker").describe_endpoint(EndpointName="guard")
    assert desc["EndpointConfigName"] == "nbscale-guard-v1"
    # it stays reported until a later version serves
    listed = json.loads(nbscale_cli("endpoints", "--json", check=True).stdout)
    assert [(e["name"], e["status"]) for e in listed] == [("guard", "ROLLED_BACK")]
    assert "guard-5xx" in listed[0]["error"]
    # the alarm clears: the next version goes through
    cw.set_alarm_state(AlarmName="guard-5xx", StateValue="OK", StateReason="fixed")
    v3 = _version(tmp_path, "guard", "v3")
    rec = be.deploy_version("guard", v3)
    assert rec.status == "READY" and rec.error is None
    assert rec.model_dir == str(v3) and rec.config["sagemaker"]["versions"] == [1, 3]
    assert (
        boto3.client("sagemaker").describe_endpoint(EndpointName="guard")["EndpointConfigName"]
        == "nbscale-guard-v3"
    )
    be.undeploy("guard")
    assert nbscale_resources("guard") == {
        k: [] for k in ("models", "configs", "endpoints", "targets", "policies")
    }
    cw.delete_alarms(AlarmNames=["guard-5xx"])


def test_endpoints_have_their_own_instance_type_and_a_new_one_rescales(aws, tmp_path):
    # a GPU training default must not become every endpoint's instance type
    toml = tmp_path / "nbscale.toml"
    toml.write_text(
        toml.read_text().replace(
            'instance_type = "ml.m5.large"', 'instance_type = "ml.g5.12xlarge"'
        )
    )
    v1 = _version(tmp_path, "sized", "v1")
    be = backend()
    be.deploy(DeployRequest("sized", v1, 1, 3, None, {}, {"instances": 2}))
    variant = aws.operations("CreateEndpointConfig")[-1]["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 2)
    aas = boto3.client("application-autoscaling")
    # a new instance type: SageMaker refuses the update while the variant is a scalable
    # target, so the target goes before the update and comes back after it
    v2 = _version(tmp_path, "sized", "v2")
    rec = be.deploy_version("sized", v2, {"instance_type": "ml.c5.xlarge", "instances": None})
    assert rec.status == "READY" and rec.config["sagemaker"]["instance_type"] == "ml.c5.xlarge"
    variant = aws.operations("CreateEndpointConfig")[-1]["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.c5.xlarge"
    (target,) = [
        t
        for t in aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
        if t["ResourceId"] == "endpoint/sized/variant/AllTraffic"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    assert nbscale_resources("sized")["policies"] == ["nbscale-sized-invocations"]
    # the same type again: the target stays (a model change is allowed)
    v3 = _version(tmp_path, "sized", "v3")
    assert be.deploy_version("sized", v3).status == "READY"
    # SageMaker cannot make an endpoint with instances serverless
    calls = len(aws.calls)
    with pytest.raises(SpecError, match="into a serverless one"):
        be.deploy_version("sized", v3, {"serverless": True, "instance_type": None})
    assert [op for op, _ in aws.calls[calls:]] == ["DescribeEndpoint"]
    be.undeploy("sized")


def test_instances_and_images_are_checked_before_sending(aws, tmp_path):
    artifact, _ = make_artifact(tmp_path / "a", name="chk")
    calls = len(aws.calls)
    with pytest.raises(SpecError, match="outside the replica range"):
        backend().deploy(DeployRequest("chk", artifact, 1, 2, None, {}, {"instances": 3}))
    with pytest.raises(SpecError, match="not a SageMaker instance type"):
        backend().deploy(DeployRequest("chk", artifact, 1, 2, None, {}, {"instance_type": "g5"}))
    with pytest.raises(SpecError, match="only a serverless endpoint has it"):
        backend().deploy(DeployRequest("chk", artifact, 1, 2, None, {}, {"max_concurrency": 4}))
    far = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/nbscale-serving:0.1.0"
    with pytest.raises(SpecError, match="does not pull images across regions"):
        backend().deploy(DeployRequest("chk", artifact, 1, 2, None, {}, {"image": far}))
    assert len(aws.calls) == calls
