"""Cost: the price table and its config, estimates, the budget refusal, a job stopped at its budget,
actual cost and spot savings in reports."""

from __future__ import annotations

import json
import time

import pytest

from nbscale import cost
from nbscale.errors import SpecError
from nbscale.jobs import submit
from nbscale.specs import Entry, JobSpec
from nbscale.store import get_store
from nbscale.store.events import BUDGET_REACHED, list_events
from nbscale.store.jobs import FAILED, SUCCEEDED, JobRecord, insert_job
from tests.support import wait_for


def test_cli_refuses_over_budget_saying_by_how_much_and_stores_nothing(
    priced, write_script, nbscale_cli
):
    script = write_script("train.py", "print('hi')\n")
    args = ("run", str(script), "--backend", "priced", "--nodes", "2", "--max-runtime", "60")
    proc = nbscale_cli(*args, "--max-cost", "100")
    # 2 nodes x $3600/h x 60 s = $120: $20 over
    assert proc.returncode == 2
    assert "$20.00 over the budget of $100.00" in proc.stderr
    assert json.loads(nbscale_cli("jobs", "--json", check=True).stdout) == []
    dry = nbscale_cli(*args, "--max-cost", "200", "--dry-run", check=True)
    assert "dry run: nothing submitted" in dry.stderr  # commentary: stdout is the spec alone
    assert "estimated cost: $7200.00/hour" in dry.stderr and "at most $120.00" in dry.stderr
    assert json.loads(dry.stdout)["max_cost"] == 200


def test_a_running_job_is_stopped_when_its_cost_reaches_the_budget(
    priced, write_script, nbscale_cli
):
    # Given a job on a backend priced at $1 per node-second with a $4 budget
    script = write_script("slow.py", "import time\nprint('start', flush=True)\ntime.sleep(120)\n")
    job = submit(JobSpec(Entry.from_path(str(script)), backend="priced", max_cost=4.0))
    # When it runs
    record = job.wait(timeout=90)
    # Then it was stopped at its budget, said so, and left an event
    assert record.status == FAILED and "budget of $4.00" in (record.error or "")
    assert record.duration < 60
    events = list_events(get_store(), kind="job", ref=job.id, types=[BUDGET_REACHED])
    assert len(events) == 1 and events[0]["data"]["max_cost"] == 4.0
    # And its actual cost is about the budget (wall-clock x nodes x price)
    c = cost.record_costs(record, priced)
    assert 4.0 <= c["cost"] <= 4.0 + 10  # polled, so a little over, never under
    listing = nbscale_cli("jobs", check=True).stdout
    assert "COST" in listing.splitlines()[0] and f"${c['cost']:.2f}" in listing
    report = cost.cost_report(since_s=3600, by="backend", config=priced)
    assert report["groups"][0]["key"] == "priced" and report["groups"][0]["cost"] >= 4.0


def _record(job_id: str, backend: str, backend_type: str, seconds: float, **kw) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=job_id,
        name=kw.pop("name", "train"),
        backend=backend,
        backend_type=backend_type,
        status=SUCCEEDED,
        spec={
            "nodes": kw.pop("nodes", 1),
            "instance_type": kw.pop("instance_type", None),
            "tags": kw.pop("tags", {}),
        },
        created=now - seconds - 10,
        started=now - seconds,
        ended=now,
        **kw,
    )


def test_actual_cost_from_billable_time_spot_savings_and_grouping(priced, nbscale_cli):
    store = get_store()
    # a managed-spot SageMaker job: 2 h on 2 nodes, billed for 0.6 h (what SageMaker reports)
    insert_job(
        store,
        _record(
            "sm-1",
            "prod",
            "sagemaker",
            7200,
            nodes=2,
            instance_type="ml.g5.xlarge",
            tags={"team": "vision"},
            info={"billable_seconds": 2160, "training_seconds": 7200},
        ),
    )
    insert_job(store, _record("loc-1", "local", "local", 600, name="etl", tags={"team": "data"}))
    old = _record("old-1", "prod", "sagemaker", 3600, instance_type="ml.g5.xlarge")
    old.started -= 30 * 86400
    old.ended -= 30 * 86400
    insert_job(store, old)
    sm = cost.record_costs(cost_rec := _first(store, "sm-1"), priced)
    assert cost_rec.backend == "prod"
    assert sm["cost"] == pytest.approx(0.6 * 2 * 1.2, abs=1e-3)
    assert sm["on_demand_cost"] == pytest.approx(2 * 2 * 1.2, abs=1e-3)
    assert sm["spot_savings"] == pytest.approx(2 * 2 * 1.2 - 0.6 * 2 * 1.2, abs=1e-3)
    week = cost.cost_report(since_s=7 * 86400, by="backend", config=priced)
    assert [g["key"] for g in week["groups"]] == ["prod", "local"]
    assert week["total"]["jobs"] == 2 and week["total"]["spot_savings"] > 3
    by_tag = cost.cost_report(by="tag", config=priced)
    assert {g["key"] for g in by_tag["groups"]} == {"team=vision", "team=data", "(no tag)"}
    out = nbscale_cli("cost", "--since", "7d", "--by", "name", check=True).stdout
    assert "train" in out and "etl" in out and "spot saved $3.36" in out
    bad = nbscale_cli("cost", "--since", "lately")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_the_cost_report_says_which_costs_rest_on_a_derived_price(
    tmp_path, nbscale_home, nbscale_cli
):
    # a SageMaker job in eu-west-1 on a type whose eu-west-1 price nbscale does not ship:
    # priced at us-east-1's x eu-west-1's region factor, and the report says so
    (tmp_path / "nbscale.toml").write_text(AWS_PRICED)
    store = get_store()
    insert_job(store, _record("ie-1", "ireland", "sagemaker", 3600, instance_type="ml.g6.xlarge"))
    insert_job(store, _record("ie-2", "ireland", "sagemaker", 3600, instance_type="ml.m5.xlarge"))
    report = json.loads(nbscale_cli("cost", "--json", check=True).stdout)
    assert report["total"]["stand_in_priced"] == 1  # ml.m5.xlarge has eu-west-1's own price
    assert report["total"]["cost"] == pytest.approx(round(1.127 * 1.115, 4) + 0.257, abs=2e-3)
    out = nbscale_cli("cost", check=True).stdout
    assert (
        "estimated: ml.g6.xlarge is priced at its us-east-1 list price, and eu-west-1's may "
        "differ (derived: x 1.115, eu-west-1's factor from 10 sourced prices"
    ) in out
    assert out.count("estimated: ") == 1


def _first(store, job_id):
    from nbscale.store.jobs import get_job

    return get_job(store, job_id)


def test_budget_guard_ignores_jobs_without_a_budget_and_free_backends(priced, write_script):
    script = write_script("quick.py", "print('done')\n")
    job = submit(JobSpec(Entry.from_path(str(script)), max_cost=0.01))  # local: free
    record = wait_for(lambda: (r := job.refresh()).terminal and r, 90, what="job end")
    assert record.status == SUCCEEDED


# -- list prices from the AWS Price List API -------------------------------------------------------
AWS_PRICED = """
[backends.ireland]
type = "sagemaker"
region = "eu-west-1"
role_arn = "arn:aws:iam::123456789012:role/train"
storage = "s3://nb-team/nbscale"

[backends.virginia]
type = "sagemaker"
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/train"
storage = "s3://nb-team/nbscale"
"""


@pytest.fixture
def price_api(tmp_path, nbscale_home, monkeypatch):
    from tests.support.emulators import AWS_ENV
    from tests.support.pricing_front import PricingFront, product

    catalog = [
        product("eu-west-1", "Train", "ml.m5.xlarge", "0.2576000000"),
        product("eu-west-1", "Host", "ml.m5.large", "0.1290000000"),
        product("eu-west-1", "Processing", "ml.m5.large", "0.1290000000"),
        product("eu-west-1", "Train", "ml.g5.xlarge", "1.5780000000"),
        product("us-east-1", "Train", "ml.m5.large", "0.1150000000"),
        product("us-east-1", "Host", "ml.g6.xlarge", "1.0100000000"),
        product("eu-central-1", "Train", "ml.m5.xlarge", "0.2760000000"),  # not asked for
    ]
    # a second page: more sizes than one GetProducts page holds
    catalog += [
        product("eu-west-1", "Host", f"ml.c6i.{n}xlarge", f"{0.2 * n:.10f}") for n in range(2, 130)
    ]
    front = PricingFront(catalog)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", front.url)
    (tmp_path / "nbscale.toml").write_text(AWS_PRICED)
    yield front
    front.stop()


def test_refresh_prices_reads_the_price_list_api_and_the_cost_module_uses_it(
    price_api, nbscale_cli, nbscale_home
):
    from nbscale import config as nbconfig

    config = nbconfig.load()
    ireland = config.backend("ireland").settings
    # before: the shipped list has eu-west-1's ml.m5.xlarge, not its ml.m5.large training
    # price, so a budget on the latter cannot be priced
    assert cost.budget_price("sagemaker", ireland, "ml.m5.xlarge", 0, "ireland") == 0.257
    with pytest.raises(SpecError, match="refresh-prices"):
        cost.budget_price("sagemaker", ireland, "ml.m5.large", 0, "ireland")

    proc = nbscale_cli("cost", "--refresh-prices", check=True)
    assert "written to" in proc.stdout and "eu-west-1, us-east-1" in proc.stdout
    asked = {
        f["Value"] for c in price_api.calls for f in c["Filters"] if f["Field"] == "regionCode"
    }
    assert asked == {"eu-west-1", "us-east-1"}  # the configured backends' regions
    assert any(c.get("NextToken") for c in price_api.calls)  # every page was read
    saved = json.loads((nbscale_home / "prices" / "sagemaker.json").read_text())
    assert saved["regions"]["eu-west-1"]["training"]["ml.m5.xlarge"] == 0.2576
    assert saved["regions"]["eu-west-1"]["hosting"]["ml.c6i.129xlarge"] == pytest.approx(25.8)
    assert "eu-central-1" not in saved["regions"]

    # the budget, estimates of endpoints and pipeline steps: at the region's own prices, the
    # refreshed file's before the shipped list's
    assert cost.budget_price("sagemaker", ireland, "ml.m5.xlarge", 0, "ireland") == 0.2576
    assert cost.foreign_list_price("sagemaker", ireland, "ml.m5.xlarge") is None
    endpoint = cost.endpoint_estimate("ireland", "ml.m5.large", instances=2, hours=10)
    assert endpoint["total"] == pytest.approx(2.58) and endpoint["price_note"] is None
    virginia = config.backend("virginia")
    assert cost.endpoint_estimate("virginia", "ml.g6.xlarge")["per_hour"] == 1.01
    # the shipped list is still there under the refreshed one
    assert cost.node_price("sagemaker", virginia.settings, "ml.p4d.24xlarge") == 25.251
    definition = {
        "Steps": [
            {
                "Name": "prep",
                "Type": "Processing",
                "Arguments": {
                    "ProcessingResources": {
                        "ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1}
                    },
                    "StoppingCondition": {"MaxRuntimeInSeconds": 7200},
                },
            },
            {
                "Name": "fit",
                "Type": "Training",
                "Arguments": {
                    "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 2},
                    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                },
            },
            {  # a sweep step: at most 4 trials, each 1 x ml.g5.xlarge for 30 minutes
                "Name": "sweep",
                "Type": "Tuning",
                "Arguments": {
                    "HyperParameterTuningJobConfig": {
                        "ResourceLimits": {
                            "MaxNumberOfTrainingJobs": 4,
                            "MaxParallelTrainingJobs": 2,
                        }
                    },
                    "TrainingJobDefinition": {
                        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1},
                        "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
                    },
                },
            },
        ]
    }
    most = cost.definition_estimate(definition, "sagemaker", ireland)
    assert most["at_most"] == pytest.approx(0.258 + 3.156 + 4 * 0.5 * 1.578)
    assert most["unpriced"] == []


def test_a_bad_or_empty_price_answer_keeps_the_old_file(price_api, nbscale_cli, nbscale_home):
    nbscale_cli("cost", "--refresh-prices", check=True)
    path = nbscale_home / "prices" / "sagemaker.json"
    before = path.read_text()

    price_api.broken = True  # a PriceList entry that is not JSON
    proc = nbscale_cli("cost", "--refresh-prices")
    assert proc.returncode != 0 and "not JSON" in proc.stderr
    assert path.read_text() == before

    price_api.broken = False
    proc = nbscale_cli("cost", "--refresh-prices", "--region", "ap-south-1")  # none listed
    assert proc.returncode != 0
    assert "returned no instance prices for ap-south-1" in proc.stderr
    assert "the price file was not changed" in proc.stderr
    assert path.read_text() == before

    proc = nbscale_cli("cost", "--region", "eu-west-1")
    assert proc.returncode == 2 and "--region: only goes with --refresh-prices" in proc.stderr
