"""The metric line ``log_metric`` prints in container jobs and trials, and its readers: Katib's
filter, SageMaker's MetricDefinitions regexes and nbscale's own ``parse_line``."""

from __future__ import annotations

import re

import pytest

from nbscale.sweeps import lines


def test_a_line_with_its_step_and_time_is_read_whole_by_nbscale_and_by_value_by_the_platforms():
    line = lines.metric_line("val_loss", 0.25, step=3, when=1733450000.1234)
    assert line == "nbscale-metric val_loss=0.25 step=3 time=1733450000.123"
    for text in (line, f"[rank 0] {line}"):
        assert lines.parse_line(text) == {
            "name": "val_loss", "value": 0.25, "step": 3, "time": 1733450000.123
        }  # fmt: skip
        katib = re.search(lines.KATIB_FILTER, text)
        assert (katib.group(1), katib.group(2)) == ("val_loss", "0.25")
        assert len(re.findall(lines.KATIB_FILTER, text)) == 1  # step= and time= are no metric
        assert re.search(lines.sagemaker_regex("val_loss"), text).group(1) == "0.25"
    assert lines.parse_line(lines.metric_line("acc", -1e-05)) == {
        "name": "acc", "value": -1e-05, "step": None, "time": None
    }  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ["epoch 1 loss 0.5", "nbscale-metric loss=", "nbscale-metric loss=nan", "nbscale-metric =1"],
)
def test_other_lines_are_no_metric(text):
    assert lines.parse_line(text) is None


def test_what_no_reader_can_take_is_not_printed():
    assert lines.metric_line("val loss", 1.0) is None  # a space would cut the name short
    assert lines.metric_line("x", float("inf")) is None
    assert lines.metric_line("x", 1.0, step="three") == "nbscale-metric x=1.0"


def test_metric_definitions_are_what_sagemakers_model_accepts():
    import botocore.session
    from botocore.validate import validate_parameters

    from nbscale.backends.sagemaker.request import MAX_METRICS, metric_definitions

    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.shape_for("MetricDefinitionList")
    found = metric_definitions({"loss", "val-acc", "bad name", *(f"m{i:02d}" for i in range(50))})
    assert len(found) == MAX_METRICS == shape.metadata["max"]
    assert found[0] == {"Name": "loss", "Regex": lines.sagemaker_regex("loss")}
    assert "bad name" not in {d["Name"] for d in found}
    validate_parameters(
        {"TrainingInputMode": "File", "MetricDefinitions": found},
        model.shape_for("AlgorithmSpecification"),
    )
    for d in found:
        for key in ("Name", "Regex"):
            member = shape.member.members[key]
            assert len(d[key]) <= member.metadata["max"]
            assert re.fullmatch(member.metadata["pattern"], d[key])


def test_log_metric_prints_on_rank_0_of_a_container_job_only(monkeypatch, capsys, tmp_path):
    from nbscale.metrics import LINES_ENV, log_metric

    monkeypatch.setenv("NBSCALE_JOB_DIR", str(tmp_path))
    monkeypatch.delenv("NBSCALE_SWEEP", raising=False)
    monkeypatch.delenv(LINES_ENV, raising=False)
    monkeypatch.setenv("RANK", "0")
    log_metric("loss", 0.5, step=1)
    assert capsys.readouterr().out == ""  # a local job: its files are read directly
    monkeypatch.setenv(LINES_ENV, "1")
    record = log_metric("loss", 0.25, step=2)
    out = capsys.readouterr().out
    assert lines.parse_line(out) == {
        "name": "loss", "value": 0.25, "step": 2, "time": round(record["time"], 3)
    }  # fmt: skip
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("NBSCALE_JOB_DIR", str(tmp_path / "rank1"))  # another process's
    log_metric("loss", 0.75, step=2)
    assert capsys.readouterr().out == ""
    assert len((tmp_path / "rank1" / "metrics" / "rank-1.jsonl").read_text().splitlines()) == 1
