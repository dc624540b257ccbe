"""CloudWatch Logs of a training job, split back into one log per rank.

SageMaker writes each instance's stdout to the stream
``<TrainingJobName>/algo-<n>-<epoch>`` of ``/aws/sagemaker/TrainingJobs``. The
launcher prefixes every rank's line with ``[rank N] ``; this module reads every
stream from where it stopped last (the ``nextForwardToken`` of each stream is kept in
the job's directory) and appends each line to ``logs/rank-N.log`` there, so reading
and following logs works exactly as for a local job. A line without a rank prefix
(the launcher's own, pip's) goes to the first rank of its node as ``[algo-n] line``.
Status changes (``SecondaryStatusTransitions``) are written to rank 0's log as
``[sagemaker] ...`` lines, so they show in the notebook as they happen.

Each host's launcher prints its node's record (exit code, rank errors) as one
``nbscale: node-record {...}`` line: it is kept as ``node-records/<node>.json`` in the
job's directory rather than in a log, so a failure on a host whose ``/opt/ml/model``
SageMaker did not upload is still named with its rank and traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ...runtime.jobdir import JobDir
from ..remote.lifecycle import log_copy_lock, route_line
from .request import LOG_GROUP

_HOST = re.compile(r"/(algo-(\d+))-\d+$")
STATE_FILE = "cloudwatch.json"
RECORDS = "node-records"


def _keep_record(jobdir: JobDir, node: int, message: str) -> bool:
    """A launcher's node-record line: saved as the node's record; True when it was one."""
    from ...runtime.launch import RECORD_LINE

    text = message.strip()
    if not text.startswith(RECORD_LINE):
        return False
    try:
        record = json.loads(text[len(RECORD_LINE) :])
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    folder = jobdir.path / RECORDS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{int(record.get('node_rank', node))}.json").write_text(json.dumps(record))
    return True


def node_records(jobdir: JobDir) -> dict[int, dict[str, Any]]:
    """The node records read from the instances' streams so far."""
    found: dict[int, dict[str, Any]] = {}
    for path in sorted((jobdir.path / RECORDS).glob("*.json")):
        try:
            found[int(path.stem)] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def locked(jobdir: JobDir):
    """One reader at a time per job directory (a CLI and the panel may both follow)."""
    return log_copy_lock(jobdir)


def _append(jobdir: JobDir, rank: int, lines: list[str]) -> None:
    if not lines:
        return
    path = jobdir.log(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))


def route(message: str, node: int, procs_per_node: int) -> tuple[int, str]:
    """The rank a CloudWatch message belongs to, and the line to keep."""
    return route_line(message.rstrip("\n"), node * procs_per_node, f"algo-{node + 1}")


def _state(jobdir: JobDir) -> dict[str, Any]:
    try:
        return json.loads((jobdir.path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"tokens": {}, "transitions": 0}


def _save_state(jobdir: JobDir, state: dict[str, Any]) -> None:
    tmp = jobdir.path / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(jobdir.path / STATE_FILE)


def record_transitions(jobdir: JobDir, transitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write the transitions not seen before to rank 0's log; return them."""
    with locked(jobdir):
        state = _state(jobdir)
        seen = int(state.get("transitions", 0))
        new = transitions[seen:]
        if not new:
            return []
        _append(
            jobdir,
            0,
            [
                f"[sagemaker] {t.get('Status')}: {t.get('StatusMessage', '')}".rstrip(": ")
                for t in new
            ],
        )
        state["transitions"] = len(transitions)
        _save_state(jobdir, state)
        return new


def sync(logs_client, jobdir: JobDir, job_name: str, procs_per_node: int) -> int:
    """Fetch new events of every instance stream; return the number of lines added."""
    from botocore.exceptions import ClientError

    added = 0
    with locked(jobdir):
        state = _state(jobdir)
        tokens: dict[str, str] = state.setdefault("tokens", {})
        streams: list[str] = []
        kwargs: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{job_name}/"}
        try:
            while True:
                page = logs_client.describe_log_streams(**kwargs)
                streams += [s["logStreamName"] for s in page.get("logStreams", [])]
                if not page.get("nextToken"):
                    break
                kwargs["nextToken"] = page["nextToken"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return 0  # no instance has written a line yet
            raise
        for stream in sorted(streams):
            m = _HOST.search(stream)
            node = int(m.group(2)) - 1 if m else 0
            while True:
                args: dict[str, Any] = {
                    "logGroupName": LOG_GROUP,
                    "logStreamName": stream,
                    "startFromHead": True,
                }
                if stream in tokens:
                    args["nextToken"] = tokens[stream]
                page = logs_client.get_log_events(**args)
                by_rank: dict[int, list[str]] = {}
                for event in page.get("events", []):
                    for message in str(event.get("message", "")).splitlines() or [""]:
                        if _keep_record(jobdir, node, message):
                            continue
                        rank, line = route(message, node, procs_per_node)
                        by_rank.setdefault(rank, []).append(line)
                for rank, lines in by_rank.items():
                    _append(jobdir, rank, lines)
                    added += len(lines)
                token = page.get("nextForwardToken")
                done = not page.get("events") or token == tokens.get(stream)
                if token:
                    tokens[stream] = token
                if done:
                    break
        _save_state(jobdir, state)
    return added


def job_dir_of(record_info: dict[str, Any]) -> JobDir:
    return JobDir(Path(record_info["job_dir"]))
