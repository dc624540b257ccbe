"""A local AWS for the SageMaker tests: moto server behind a small HTTP front on 127.0.0.1.

Every boto3 client of the tests and of nbscale talks to the front (``AWS_ENDPOINT_URL``),
so requests are real botocore requests (shapes validated, signed, serialised). The front
forwards everything to moto, except where moto has no model of what SageMaker does:

- training jobs in moto are born ``Completed``; here a created job starts
  ``InProgress``/``Starting`` and the test moves it (``set_training``) through the
  states SageMaker reports, with ``SecondaryStatusTransitions`` as SageMaker keeps them;
- ``StopTrainingJob``, ``UpdateEndpoint``, ``ListPipelineExecutionSteps`` and
  ``StopPipelineExecution`` (absent from moto) are answered with the response shapes of
  the SageMaker API reference;
- ``UpdateEndpoint`` behaves as the SageMaker guides describe it: the endpoint is
  ``Updating`` and keeps serving its old config (``PendingDeploymentSummary`` names the new
  one) until the update is over; then it is ``InService`` on the new config, or, when an
  alarm of the deployment's ``AutoRollbackConfiguration`` is in ALARM in CloudWatch (moto's
  alarms: a test sets one with ``SetAlarmState``), rolled back: ``InService`` on the old
  config, ``FailureReason`` saying why, ``LastDeploymentConfig`` the deployment's. An
  update that changes the instance type of a registered scalable target is refused (the
  Application Auto Scaling guide), as is turning an instance endpoint serverless;
- ``CreateModel`` refuses an ECR image of another region, and ``CreateEndpointConfig`` a
  serverless variant with data capture or a model in a VPC (the serverless feature
  exclusions), each as a ``ValidationException``;
- ``InvokeEndpoint`` for an endpoint the test attached to a real serving process is
  forwarded to that process's ``/invocations`` (the container SageMaker would run);
- CloudWatch percentiles (``GetMetricData`` with ``p99``), which moto lacks, come from
  ``tests.support.cloudwatch_percentiles`` over the values the test put.

Every request body is kept (``bodies``), so tests can check that no key or credential
was ever sent.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

from moto.server import ThreadedMotoServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class Emulator:
    def __init__(self) -> None:
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.moto_addr = (host, port)
        self.lock = threading.Lock()
        self.bodies: list[tuple[str, str, bytes]] = []  # (method, path, body)
        self.calls: list[tuple[str, dict]] = []  # (SageMaker operation, request)
        self.training: dict[str, dict[str, Any]] = {}
        self.training_metrics: dict[str, list[dict[str, Any]]] = {}  # as CreateTrainingJob sent
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.invoke_targets: dict[str, tuple[str, dict[str, str]]] = {}
        self.pipeline_steps: dict[str, list[dict[str, Any]]] = {}
        self.pipeline_status: dict[str, str] = {}
        # DescribeEndpoint answers before a Creating/Updating endpoint is InService
        self.endpoint_polls = 2
        self.fail_next_endpoint: str | None = None
        self._local = threading.local()  # the region of the request being answered
        from tests.support.cloudwatch_percentiles import CloudWatchPercentiles

        self.cloudwatch = CloudWatchPercentiles()
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                if self.command == "HEAD":  # the size of the object, not of this empty body
                    length = next(
                        (v for k, v in headers.items() if k.lower() == "content-length"), "0"
                    )
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
                conn = http.client.HTTPConnection(*emulator.moto_addr, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["Host"] = f"{emulator.moto_addr[0]}:{emulator.moto_addr[1]}"
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                out = dict(resp.getheaders())
                conn.close()
                return resp.status, data, out

            def _handle(self) -> None:
                body = self._body()
                with emulator.lock:
                    emulator.bodies.append((self.command, self.path, body))
                target = self.headers.get("X-Amz-Target", "")
                scope = re.search(
                    r"Credential=[^/]+/\d+/([a-z0-9-]+)/", self.headers.get("Authorization", "")
                )
                emulator._local.region = scope.group(1) if scope else "us-east-1"
                if target.startswith("SageMaker."):
                    op = target.split(".", 1)[1]
                    request = json.loads(body or b"{}")
                    with emulator.lock:
                        emulator.calls.append((op, request))
                    handler = getattr(emulator, f"_sm_{op}", None)
                    if handler is not None:
                        status, answer = handler(request, lambda: self._forward(body))
                        return self._answer(
                            status,
                            json.dumps(answer, default=str).encode(),
                            {"Content-Type": "application/x-amz-json-1.1"},
                        )
                path = urlparse(self.path).path
                answer = emulator.cloudwatch.handle(path, self.headers, body, self._forward)
                if answer is not None:
                    return self._answer(*answer)
                if path.startswith("/endpoints/") and path.endswith("/invocations"):
                    name = path.split("/")[2]
                    if name in emulator.invoke_targets:
                        return self._answer(*emulator._invoke(name, body, self.headers))
                self._answer(*self._forward(body))

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.moto.stop()

    # -- training jobs --------------------------------------------------------------
    def _sm_CreateTrainingJob(self, request, forward):
        status, data, _ = forward()
        answer = json.loads(data or b"{}")
        if status == 200:
            now = time.time()
            with self.lock:
                self.training[request["TrainingJobName"]] = {
                    "TrainingJobStatus": "InProgress",
                    "SecondaryStatus": "Starting",
                    "SecondaryStatusTransitions": [
                        {
                            "Status": "Starting",
                            "StartTime": now,
                            "StatusMessage": "Launching requested ML instances",
                        }
                    ],
                    "CreationTime": now,
                    "LastModifiedTime": now,
                }
                # AWS describes the metric definitions it was sent (moto makes up its own)
                self.training_metrics[request["TrainingJobName"]] = list(
                    (request.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or []
                )
        return status, answer

    def _sm_DescribeTrainingJob(self, request, forward):
        status, data, _ = forward()
        answer = json.loads(data or b"{}")
        with self.lock:
            state = self.training.get(request.get("TrainingJobName"))
            if status != 200 or state is None:
                return status, answer
            sent = self.training_metrics.get(request.get("TrainingJobName"))
            # AWS answers the definitions it was sent, and final values only of those, as
            # its CloudWatch metrics give them (set_training(FinalMetricDataList=...)); moto
            # answers made-up ones (test:dcg, train:progress)
            answer.pop("FinalMetricDataList", None)
            algo = answer.get("AlgorithmSpecification")
            if algo is not None and sent is not None:
                if sent:
                    algo["MetricDefinitions"] = sent
                else:
                    algo.pop("MetricDefinitions", None)
            answer.update(json.loads(json.dumps(state)))
        if answer["TrainingJobStatus"] in ("InProgress", "Stopping"):
            for key in ("TrainingEndTime", "ModelArtifacts"):
                answer.pop(key, None)
            if not any(
                t["Status"] == "Training" for t in answer.get("SecondaryStatusTransitions", [])
            ):
                answer.pop("TrainingStartTime", None)
        return status, answer

    def set_training(
        self, name: str, status: str, secondary: str, message: str = "", **fields: Any
    ) -> None:
        """Move a training job as SageMaker would: one more status transition."""
        now = time.time()
        with self.lock:
            state = self.training[name]
            transitions = state["SecondaryStatusTransitions"]
            if transitions and transitions[-1]["Status"] != secondary:
                transitions[-1]["EndTime"] = now
            if not transitions or transitions[-1]["Status"] != secondary:
                transitions.append(
                    {"Status": secondary, "StartTime": now, "StatusMessage": message or secondary}
                )
            state.update(
                TrainingJobStatus=status, SecondaryStatus=secondary, LastModifiedTime=now, **fields
            )
            if secondary == "Training" and "TrainingStartTime" not in state:
                state["TrainingStartTime"] = now
            if status in ("Completed", "Failed", "Stopped"):
                state.setdefault("TrainingEndTime", now)

    def _sm_StopTrainingJob(self, request, forward):
        name = request.get("TrainingJobName")
        with self.lock:
            state = self.training.get(name)
        if state is None:
            return 400, {
                "__type": "ValidationException",
                "message": f"Requested resource not found: {name}",
            }
        if state["TrainingJobStatus"] != "InProgress":
            return 400, {
                "__type": "ValidationException",
                "message": f"The request was rejected because the training job is in status {state['TrainingJobStatus']}.",
            }
        self.set_training(name, "Stopping", "Stopping", "Stopping the training job")
        return 200, {}  # StopTrainingJob has an empty response

    # -- endpoints ------------------------------------------------------------------
    def _sm_CreateEndpoint(self, request, forward):
        status, data, _ = forward()
        answer = json.loads(data or b"{}")
        if status == 200:
            with self.lock:
                self.endpoints[request["EndpointName"]] = {
                    "EndpointStatus": "Creating",
                    "EndpointConfigName": request["EndpointConfigName"],
                    "_polls": 0,
                    "_fail": self.fail_next_endpoint,
                }
                self.fail_next_endpoint = None
        return status, answer

    def _variants(self, config_name: str, forward_config) -> list[dict[str, Any]]:
        status, data, _ = forward_config(config_name)
        variants = json.loads(data or b"{}").get("ProductionVariants", []) if status == 200 else []
        out = []
        for v in variants:
            entry = {"VariantName": v["VariantName"], "CurrentWeight": 1.0, "DesiredWeight": 1.0}
            if "ServerlessConfig" in v:
                entry["CurrentServerlessConfig"] = v["ServerlessConfig"]
            else:
                entry["CurrentInstanceCount"] = entry["DesiredInstanceCount"] = v[
                    "InitialInstanceCount"
                ]
            out.append(entry)
        return out

    def _sm_DescribeEndpoint(self, request, forward):
        status, data, _ = forward()
        answer = json.loads(data or b"{}")
        with self.lock:
            state = self.endpoints.get(request.get("EndpointName"))
            if status != 200 or state is None:
                return status, answer
            if state["EndpointStatus"] in ("Creating", "Updating"):
                state["_polls"] += 1
                if state["_polls"] > self.endpoint_polls:  # SageMaker finished its work
                    if state.get("_fail"):
                        state["EndpointStatus"] = "Failed"
                        state["FailureReason"] = state["_fail"]
                    elif state.get("_pending"):
                        self._finish_update(state)
                    else:
                        state["EndpointStatus"] = "InService"
            public = {k: v for k, v in state.items() if not k.startswith("_")}
        answer.update(public)
        answer["ProductionVariants"] = self._variants(
            public["EndpointConfigName"],
            lambda name: self._moto_json("DescribeEndpointConfig", {"EndpointConfigName": name}),
        )
        return status, answer

    def _moto_json(self, op: str, payload: dict) -> tuple[int, bytes, dict]:
        """A SageMaker call of the emulator's own, straight to moto."""
        conn = http.client.HTTPConnection(*self.moto_addr, timeout=30)
        conn.request(
            "POST",
            "/",
            body=json.dumps(payload),
            headers={
                "X-Amz-Target": f"SageMaker.{op}",
                "Content-Type": "application/x-amz-json-1.1",
                "Authorization": "AWS4-HMAC-SHA256 Credential=x/20261201/us-east-1/sagemaker/aws4_request, SignedHeaders=host, Signature=x",
            },
        )
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data, {}

    def _sm_UpdateEndpoint(self, request, forward):
        name = request.get("EndpointName")
        new = request["EndpointConfigName"]
        with self.lock:
            state = self.endpoints.get(name)
            current = state and state["EndpointConfigName"]
            busy = state and state["EndpointStatus"] != "InService"
        if state is None:
            return _invalid(f'Could not find endpoint "{name}".')
        if busy:
            return _invalid(
                f'Cannot update in-progress endpoint "arn:aws:sagemaker:{self._region()}:'
                f'123456789012:endpoint/{name.lower()}".'
            )
        old_variants, new_variants = self._config_variants(current), self._config_variants(new)
        if new_variants is None:
            return _invalid(f'Could not find endpoint configuration "{new}".')
        old_by_name = {v["VariantName"]: v for v in old_variants or []}
        for v in new_variants:
            old = old_by_name.get(v["VariantName"])
            if old is None:
                continue
            if "ServerlessConfig" in v and "ServerlessConfig" not in old:
                return _invalid(
                    "Cannot update an endpoint with instance-based variants to serverless "
                    f"(variant {v['VariantName']})."
                )
            if (
                old.get("InstanceType")
                and v.get("InstanceType") != old.get("InstanceType")
                and self._scalable(name, v["VariantName"])
            ):
                return _invalid(
                    f"The variant {v['VariantName']} of endpoint {name} is registered with "
                    "Application Auto Scaling, and the update changes its instance type. "
                    "Deregister the scalable target before updating the endpoint."
                )
        now = time.time()
        with self.lock:
            state.update(EndpointStatus="Updating", _polls=0, _pending=new)
            state.pop("FailureReason", None)
            if request.get("DeploymentConfig"):
                state["LastDeploymentConfig"] = request["DeploymentConfig"]
            state["PendingDeploymentSummary"] = {
                "EndpointConfigName": new,
                "StartTime": now,
                "ProductionVariants": [
                    {
                        "VariantName": v["VariantName"],
                        "VariantStatus": [
                            {
                                "Status": "Creating",
                                "StatusMessage": f"Launching {v.get('InitialInstanceCount', 1)} instance(s).",
                                "StartTime": now,
                            }
                        ],
                    }
                    for v in new_variants
                ],
            }
        arn = f"arn:aws:sagemaker:{self._region()}:123456789012:endpoint/{name.lower()}"
        return 200, {"EndpointArn": arn}

    def _finish_update(self, state: dict[str, Any]) -> None:
        """The update is over (lock held): the new config serves, or SageMaker rolled back
        because an alarm of the deployment's auto-rollback configuration is in ALARM."""
        new = state.pop("_pending")
        state.pop("PendingDeploymentSummary", None)
        state["EndpointStatus"] = "InService"
        alarms = [
            a["AlarmName"]
            for a in state.get("LastDeploymentConfig", {})
            .get("AutoRollbackConfiguration", {})
            .get("Alarms", [])
        ]
        fired = []
        if alarms:
            found = self._moto_client("cloudwatch").describe_alarms(AlarmNames=alarms)
            fired = [a["AlarmName"] for a in found["MetricAlarms"] if a["StateValue"] == "ALARM"]
        if fired:
            state["FailureReason"] = (
                f"The deployment of endpoint configuration {new} was rolled back because "
                f"CloudWatch alarm(s) {', '.join(fired)} went into ALARM state."
            )
        else:
            state["EndpointConfigName"] = new

    def _config_variants(self, config_name: str | None) -> list[dict[str, Any]] | None:
        if not config_name:
            return None
        status, data, _ = self._moto_json(
            "DescribeEndpointConfig", {"EndpointConfigName": config_name}
        )
        return json.loads(data or b"{}").get("ProductionVariants", []) if status == 200 else None

    def _scalable(self, endpoint: str, variant: str) -> bool:
        targets = self._moto_client("application-autoscaling").describe_scalable_targets(
            ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{endpoint}/variant/{variant}"]
        )["ScalableTargets"]
        return bool(targets)

    def _moto_client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=f"http://{self.moto_addr[0]}:{self.moto_addr[1]}",
            region_name=self._region(),
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def _region(self) -> str:
        return getattr(self._local, "region", "us-east-1")

    def _sm_CreateModel(self, request, forward):
        image = request.get("PrimaryContainer", {}).get("Image", "")
        ecr = re.match(r"^\d{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/", image)
        if ecr and ecr.group(1) != self._region():
            return _invalid(
                f'Region of "{image}" does not match expected region of {self._region()}. '
                "Cross region ECR image pulls are not allowed."
            )
        status, data, _ = forward()
        return status, json.loads(data or b"{}")

    def _sm_CreateEndpointConfig(self, request, forward):
        for v in request.get("ProductionVariants", []):
            if "ServerlessConfig" not in v:
                continue
            if request.get("DataCaptureConfig"):
                return _invalid(
                    "DataCaptureConfig is not supported for an endpoint configuration with "
                    f"serverless production variant {v['VariantName']}."
                )
            status, data, _ = self._moto_json("DescribeModel", {"ModelName": v["ModelName"]})
            if status == 200 and json.loads(data or b"{}").get("VpcConfig"):
                return _invalid(
                    f"Model {v['ModelName']} has a VpcConfig, and VPC configuration is not "
                    f"supported for serverless production variant {v['VariantName']}."
                )
        status, data, _ = forward()
        return status, json.loads(data or b"{}")

    def _sm_DeleteEndpoint(self, request, forward):
        status, data, _ = forward()
        with self.lock:
            self.endpoints.pop(request.get("EndpointName"), None)
        return status, json.loads(data or b"{}")

    def set_endpoint(self, name: str, status: str, **fields: Any) -> None:
        with self.lock:
            self.endpoints[name].update(EndpointStatus=status, **fields)

    def attach(self, endpoint: str, url: str, headers: dict[str, str] | None = None) -> None:
        """InvokeEndpoint on ``endpoint`` goes to ``url`` + ``/invocations`` (a real server;
        ``headers`` are what SageMaker's front would add, e.g. the test server's token)."""
        self.invoke_targets[endpoint] = (url, dict(headers or {}))

    def _invoke(self, name: str, body: bytes, headers) -> tuple[int, bytes, dict[str, str]]:
        url, extra = self.invoke_targets[name]
        parsed = urlparse(url)
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        conn.request(
            "POST",
            "/invocations",
            body=body,
            headers={
                "Content-Type": headers.get("Content-Type", "application/json"),
                "Accept": headers.get("Accept", "application/json"),
                **extra,
            },
        )
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        out = {"Content-Type": resp.getheader("Content-Type", "application/json")}
        if resp.status != 200:  # SageMaker wraps a container error as ModelError
            err = {
                "__type": "ModelError",
                "message": f"Received client error ({resp.status}) from primary with message "
                f'"{data.decode(errors="replace")}"',
                "OriginalStatusCode": resp.status,
                "OriginalMessage": data.decode(errors="replace"),
            }
            return 424, json.dumps(err).encode(), {"Content-Type": "application/json"}
        out["x-Amzn-Invoked-Production-Variant"] = "AllTraffic"
        return 200, data, out

    # -- pipelines ------------------------------------------------------------------
    def _sm_StartPipelineExecution(self, request, forward):
        status, data, _ = forward()
        answer = json.loads(data or b"{}")
        if status == 200:
            with self.lock:
                self.pipeline_steps[answer["PipelineExecutionArn"]] = []
                self.pipeline_status[answer["PipelineExecutionArn"]] = "Executing"
        return status, answer

    def _sm_DescribePipelineExecution(self, request, forward):
        status, data, _ = forward()
        answer = json.loads(data or b"{}")
        with self.lock:
            state = self.pipeline_status.get(request.get("PipelineExecutionArn"))
        if status == 200 and state:
            answer["PipelineExecutionStatus"] = state
        return status, answer

    def set_step(self, execution_arn: str, step: str, status: str, reason: str = "") -> None:
        now = time.time()
        with self.lock:
            steps = self.pipeline_steps[execution_arn]
            for s in steps:
                if s["StepName"] == step:
                    s["StepStatus"] = status
                    if status in ("Succeeded", "Failed", "Stopped"):
                        s["EndTime"] = now
                    if reason:
                        s["FailureReason"] = reason
                    return
            entry = {"StepName": step, "StepStatus": status, "StartTime": now, "AttemptCount": 1}
            if reason:
                entry["FailureReason"] = reason
            steps.insert(0, entry)  # SageMaker lists the newest step first

    def set_execution(self, execution_arn: str, status: str) -> None:
        with self.lock:
            self.pipeline_status[execution_arn] = status

    def _sm_ListPipelineExecutionSteps(self, request, forward):
        arn = request.get("PipelineExecutionArn")
        with self.lock:
            steps = self.pipeline_steps.get(arn)
            if steps is None:
                return 400, {
                    "__type": "ResourceNotFound",
                    "message": f"Pipeline execution {arn} does not exist",
                }
            return 200, {"PipelineExecutionSteps": json.loads(json.dumps(steps))}

    def _sm_StopPipelineExecution(self, request, forward):
        arn = request.get("PipelineExecutionArn")
        with self.lock:
            if arn not in self.pipeline_status:
                return 400, {
                    "__type": "ResourceNotFound",
                    "message": f"Pipeline execution {arn} does not exist",
                }
            self.pipeline_status[arn] = "Stopping"
        return 200, {"PipelineExecutionArn": arn}

    # -- helpers --------------------------------------------------------------------
    def operations(self, name: str) -> list[dict]:
        with self.lock:
            return [req for op, req in self.calls if op == name]

    def all_bodies(self) -> bytes:
        with self.lock:
            return b"\n".join(body for _, _, body in self.bodies)


def _invalid(message: str) -> tuple[int, dict[str, str]]:
    """SageMaker's error for a request it refuses (JSON protocol: ``__type`` and ``message``)."""
    return 400, {"__type": "ValidationException", "message": message}
