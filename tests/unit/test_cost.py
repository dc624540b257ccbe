"""Cost: the price table and its config, estimates and the budget arithmetic, the train report's
estimate (the CLI's refusal, a job stopped at its budget and actual costs: tests/integration)."""

from __future__ import annotations

import json

import pytest

from nbscale import cost
from nbscale.errors import SpecError
from nbscale.specs import Entry, JobSpec


def test_price_table_list_prices_config_overrides_and_free_local(priced):
    assert cost.node_price("local", {}) == 0.0  # a local GPU-hour is free unless configured
    assert cost.node_price("local", {}, gpus_per_node=4) == 0.0
    gpu_box = priced.backend("gpu-box")
    assert cost.node_price("local", gpu_box.settings, gpus_per_node=2) == pytest.approx(1.8)
    prod = priced.backend("prod").settings
    assert cost.node_price("sagemaker", prod, "ml.g5.xlarge") == 1.2  # configured
    assert cost.node_price("sagemaker", prod, "ml.p4d.24xlarge") == 25.251  # list price
    with pytest.raises(SpecError, match="no price known"):
        cost.node_price("sagemaker", prod, "ml.nope.xlarge")
    with pytest.raises(SpecError, match="gpu_hour_price"):
        cost.node_price("local", {"gpu_hour_price": "cheap"}, gpus_per_node=1)


def test_estimate_and_budget_arithmetic(priced, write_script):
    script = write_script("train.py", "print('hi')\n")
    spec = JobSpec(
        Entry.from_path(str(script)),
        backend="prod",
        nodes=2,
        instance_type="ml.g5.xlarge",
        max_runtime=1800,
        max_cost=1.0,
    )
    est = cost.spec_estimate(spec, priced)
    assert est["per_hour"] == pytest.approx(2.4) and est["total"] == pytest.approx(1.2)
    assert est["budget_hours"] == pytest.approx(1 / 2.4, rel=1e-3)
    with pytest.raises(SpecError) as err:
        cost.check_budget(spec, priced)
    assert "$1.20" in str(err.value) and "$0.20 over the budget of $1.00" in str(err.value)
    ok = spec.replace(max_cost=1.5)
    assert cost.check_budget(ok, priced)["total"] == pytest.approx(1.2)
    assert "at most $1.20" in cost.describe_estimate(cost.spec_estimate(ok, priced))
    with pytest.raises(SpecError, match="max_cost"):
        spec.replace(max_cost=-3)


def test_train_dry_run_report_shows_the_estimate_and_refuses_over_budget(priced):
    from nbscale.celljob import prepare_cell

    spec = JobSpec(Entry("bundle", "<cell>"), name="cell", backend="priced", max_runtime=30)
    prepared = prepare_cell("x = 1\n", {}, spec.replace(max_cost=60.0))
    text = prepared.dry_run()._repr_mimebundle_()["text/plain"]
    assert "estimated cost: $3600.00/hour" in text and "at most $30.00" in text
    over = prepare_cell("x = 1\n", {}, spec.replace(max_cost=10.0))
    with pytest.raises(SpecError, match=r"\$20.00 over the budget of \$10.00"):
        over.dry_run()


def test_train_report_carries_the_estimate_when_the_job_costs_or_has_a_budget(priced):
    from nbscale.magics.train import _note

    from nbscale.celljob import prepare_cell

    priced_cell = prepare_cell(
        "x = 1\n", {}, JobSpec(Entry("bundle", "<cell>"), name="cell", backend="priced")
    )
    assert "estimated cost: $3600.00/hour" in _note(priced_cell)
    free = prepare_cell("x = 1\n", {}, JobSpec(Entry("bundle", "<cell>"), name="cell"))
    assert "estimated cost" not in _note(free)
    budget = prepare_cell(
        "x = 1\n", {}, JobSpec(Entry("bundle", "<cell>"), name="cell", max_cost=5.0)
    )
    assert "never reached" in _note(budget)


def test_sagemaker_backend_takes_the_price_table_it_documents_and_refuses_bad_prices(priced):
    from nbscale.backends.sagemaker.settings import settings as sagemaker_settings
    from nbscale.config import BackendConfig

    prod = priced.backend("prod")
    base = {**prod.settings, "storage": "s3://bucket/nbscale"}
    table = {**base, "spot_prices": {"ml.g5.xlarge": 0.5}, "spot_discount": 0.7}
    sagemaker_settings(BackendConfig("prod", "sagemaker", table))  # accepted as documented
    for bad, named in (
        ({"prices": {"ml.g5.xlarge": "cheap"}}, "prices.ml.g5.xlarge"),
        ({"spot_discount": 1.5}, "spot_discount"),
        ({"prices": 3}, "prices"),
    ):
        with pytest.raises(SpecError, match=named.replace(".", r"\.")):
            sagemaker_settings(BackendConfig("prod", "sagemaker", {**base, **bad}))


def _sagemaker(region: str = "us-east-1", **extra):
    from nbscale.backends.sagemaker.settings import settings as sagemaker_settings
    from nbscale.config import BackendConfig

    raw = {
        "region": region,
        "role_arn": "arn:aws:iam::123456789012:role/train",
        "storage": "s3://nb-bucket/nbscale",
        **extra,
    }
    return sagemaker_settings(BackendConfig("aws", "sagemaker", raw))


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_max_cost_takes_the_backends_prices_for_a_type_nbscale_does_not_list(region):
    """prices = {"ml.g6.xlarge" = 0.98}: the budget buys 0.98 USD an hour, in any region."""
    from nbscale.backends.sagemaker import request

    settings = _sagemaker(region, prices={"ml.g6.xlarge": 0.98}, instance_type="ml.g6.xlarge")
    job = JobSpec(Entry("module", "train"), name="fit", max_cost=0.98, nodes=2).to_dict()
    assert request.budget_runtime(job, settings) == 1800  # 2 nodes x 0.98/h: half an hour
    other = {**job, "instance_type": "ml.g6.xlarge"}
    assert request.budget_runtime(other, _sagemaker(region, prices={"ml.g6.xlarge": 0.98})) == 1800


# the families, components and regions: each is shipped or named missing in the table
FAMILIES = ("m5", "m6i", "c5", "c6i", "g4dn", "g5", "g6", "p3", "p4d", "p5")
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1")


_API_TYPES = {
    "training": "TrainingInstanceType",
    "hosting": "ProductionVariantInstanceType",
    "processing": "ProcessingInstanceType",
}


def _api_types(shape: str) -> list[str]:
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker").shape_for(shape).enum


def _shipped() -> dict:
    from importlib import resources

    text = resources.files("nbscale.backends.sagemaker").joinpath("prices.json").read_text()
    return json.loads(text)


def test_the_shipped_list_has_each_family_component_and_region_or_names_it_missing():
    data = _shipped()
    about = " ".join(data["_about"])
    assert data["date"] and "Price List" in about and "Sources" in about
    regions = data["regions"]
    missing = data["missing"]
    shipped_families = {
        instance.split(".")[1]
        for parts in regions.values()
        for table in parts.values()
        for instance in table
    }
    for family in FAMILIES:
        named = f"ml.{family}" in missing["families"]
        # shipped, or named missing: never both, never neither
        assert (family in shipped_families) != named, family
    assert {"m5", "c5", "g4dn", "g5", "g6", "p3", "p4d", "p5"} <= shipped_families
    # us-east-1, per component: each type of those families that the SageMaker API offers for
    # it (botocore's enums) is shipped or named missing, never both; nothing else is shipped
    for component, enum in _API_TYPES.items():
        offered = {t for t in _api_types(enum) if t.split(".")[1] in FAMILIES}
        shipped = set(regions["us-east-1"][component])
        named = set(missing["components"].get(component, []))
        assert shipped <= set(_api_types(enum)), (component, shipped - set(_api_types(enum)))
        assert not shipped & named, (component, shipped & named)
        assert offered == shipped | named, (component, offered - shipped - named)
    for region in REGIONS:
        named = any(entry.split(" ")[0] == region for entry in missing["regions"])
        assert region in regions or named, region
    for region in regions:  # a region shipped whole is not also named missing
        assert region not in missing["regions"]
    # every shipped figure is a price the table's own loader accepts
    assert cost._packaged("nbscale.backends.sagemaker:prices.json") == {
        region: {c: {k: float(v) for k, v in t.items()} for c, t in parts.items()}
        for region, parts in regions.items()
    }


def test_each_region_factor_is_the_median_of_shipped_price_pairs():
    """A factor rests on pairs of sourced prices; where the table ships either side of a
    pair, the pair is that figure, and the factor is their median to 3 decimals."""
    import statistics

    data = _shipped()
    regions = data["regions"]
    assert set(data["region_factors"]) == {"eu-west-1", "us-west-2"}
    for region, entry in data["region_factors"].items():
        assert entry["of"] == "us-east-1" and entry["source"]
        ratios = []
        for key, (mine, theirs) in entry["pairs"].items():
            component, instance = key.split(" ")
            assert regions["us-east-1"][component][instance] == theirs, key
            own = regions.get(region, {}).get(component, {}).get(instance)
            assert own in (None, mine), key  # a shipped figure of the region is the pair's
            ratios.append(mine / theirs)
        assert len(ratios) >= 10
        assert entry["factor"] == round(statistics.median(ratios), 3)
        assert entry["spread"] == pytest.approx([min(ratios), max(ratios)], abs=5e-5)
        found = cost.region_factor("sagemaker", region)
        assert (found.factor, found.pairs) == (entry["factor"], len(ratios))
        # a factor never stands for a region's own figures: still named missing
        assert any(m.startswith(f"{region} ") for m in data["missing"]["regions"]), region
    assert cost.region_factor("sagemaker", "us-east-1") is None
    assert cost.region_factor("sagemaker", "ap-northeast-1") is None  # one pair: none derived


def test_a_region_without_a_figure_is_priced_at_the_derived_price_for_estimates_only():
    ireland, oregon = {"region": "eu-west-1"}, {"region": "us-west-2"}
    # eu-west-1's own figure stands as it is
    assert cost.node_price("sagemaker", ireland, "ml.g4dn.12xlarge", 0, "hosting") == 5.453
    assert cost.foreign_list_price("sagemaker", ireland, "ml.g4dn.12xlarge", "hosting") is None
    # a type it lacks: us-east-1's list price x 1.115, for each component, with a note
    for instance, component, virginia in (
        ("ml.m6i.xlarge", "training", 0.23),
        ("ml.g5.2xlarge", "hosting", 1.515),
        ("ml.c5.9xlarge", "processing", 1.836),
    ):
        derived = cost.node_price("sagemaker", ireland, instance, 0, component)
        assert derived == round(virginia * 1.115, 4), instance
        why, setting = cost.foreign_list_price("sagemaker", ireland, instance, component)
        assert why.startswith(f"{instance} is priced at its us-east-1 list price")
        assert "(derived: x 1.115, eu-west-1's factor from 10 sourced prices" in why
        assert "1.080 to 1.117 times us-east-1's" in why
        assert setting == f'prices = {{ "{instance}" = USD_PER_HOUR }}'
    # us-west-2: x 1.0, still a stand-in that says so
    assert cost.node_price("sagemaker", oregon, "ml.g6.8xlarge") == 2.518
    assert "derived: x 1," in cost.foreign_list_price("sagemaker", oregon, "ml.g6.8xlarge")[0]
    # eu-central-1 has no factor: us-east-1's price with the plain note
    frankfurt = {"region": "eu-central-1"}
    assert cost.node_price("sagemaker", frankfurt, "ml.m6i.xlarge") == 0.23
    assert "derived" not in cost.foreign_list_price("sagemaker", frankfurt, "ml.m6i.xlarge")[0]
    # the backend's own price comes first; a budget is never turned into runtime at a derived
    # price
    assert (
        cost.node_price("sagemaker", {**ireland, "prices": {"ml.m6i.xlarge": 0.3}}, "ml.m6i.xlarge")
        == 0.3
    )
    with pytest.raises(SpecError, match="the budget cannot be priced: .*derived"):
        cost.budget_price("sagemaker", ireland, "ml.m6i.xlarge", 0, "aws")
    # the estimate a user sees carries the note
    est = cost.spec_estimate(
        {"backend": "aws", "instance_type": "ml.m6i.xlarge", "nodes": 2, "max_runtime": 3600},
        _config({"region": "eu-west-1"}),
    )
    assert est["price_per_node_hour"] == 0.2565 and est["total"] == pytest.approx(0.513)
    assert "derived: x 1.115" in cost.describe_estimate(est)


def test_a_pipeline_step_at_a_derived_price_says_so_once():
    def step(name, kind, instance):
        key = "ProcessingResources" if kind == "Processing" else "ResourceConfig"
        cluster = {"InstanceType": instance, "InstanceCount": 1}
        arguments = {key: {"ClusterConfig": cluster} if kind == "Processing" else cluster}
        arguments["StoppingCondition"] = {"MaxRuntimeInSeconds": 3600}
        return {"Name": name, "Type": kind, "Arguments": arguments}

    definition = {
        "Steps": [
            step("prep", "Processing", "ml.m5.xlarge"),  # eu-west-1's own 0.257
            step("fit", "Training", "ml.g6.xlarge"),  # derived
            step("fit-again", "Training", "ml.g6.xlarge"),
        ]
    }
    most = cost.definition_estimate(definition, "sagemaker", {"region": "eu-west-1"})
    prices = [s["price_per_instance_hour"] for s in most["steps"]]
    assert prices == [0.257, round(1.127 * 1.115, 4), round(1.127 * 1.115, 4)]
    assert most["steps"][0]["price_note"] is None
    assert len(most["price_notes"]) == 1
    assert most["price_notes"][0].startswith("ml.g6.xlarge is priced at its us-east-1 list price")
    assert "derived: x 1.115" in most["price_notes"][0]
    virginia = cost.definition_estimate(definition, "sagemaker", {"region": "us-east-1"})
    assert virginia["price_notes"] == []


def _config(settings: dict):
    from nbscale.config import BackendConfig, Config

    return Config(backends={"aws": BackendConfig("aws", "sagemaker", settings)})


def test_ml_m5_large_is_priced_for_training_hosting_and_processing():
    # ml.m5.large: the endpoint default, the pipeline instance picker's smallest type and the
    # real-account test's
    virginia = {"region": "us-east-1"}
    for component in cost.COMPONENTS:
        assert cost.list_price("sagemaker", "ml.m5.large", "us-east-1", component) == 0.115
        assert cost.node_price("sagemaker", virginia, "ml.m5.large", 0, component) == 0.115
    # the newer AWS price list's figure, not the late-2025 page's 37.688
    assert cost.list_price("sagemaker", "ml.p4d.24xlarge", "us-east-1") == 25.251
    # eu-west-1: AWS's bill of 2023-12 states each component's rate of ml.m5.xlarge
    for component in cost.COMPONENTS:
        assert cost.list_price("sagemaker", "ml.m5.xlarge", "eu-west-1", component) == 0.257


def test_a_warm_pool_is_billed_at_the_regions_training_list_price():
    from types import SimpleNamespace

    from nbscale.config import BackendConfig, Config

    config = Config(backends={"aws": BackendConfig("aws", "sagemaker", {"region": "eu-west-1"})})
    record = SimpleNamespace(
        duration=3600.0,
        spec={"instance_type": "ml.g4dn.xlarge", "nodes": 1},
        backend="aws",
        backend_type="sagemaker",
        info={"billable_seconds": 3600, "retained_billable_seconds": 7200},
    )
    found = cost.record_costs(record, config)
    # training 0.822 in eu-west-1 (its hosting rate is 0.821): 1 h of job, 2 h of warm pool
    assert found["price_per_node_hour"] == 0.822
    assert found["warm_pool_cost"] == pytest.approx(1.644)
    assert found["cost"] == pytest.approx(0.822 + 1.644)
    assert found["price_note"] is None  # eu-west-1's own price
    derived = SimpleNamespace(**{**vars(record), "spec": {"instance_type": "ml.g6.xlarge"}})
    found = cost.record_costs(derived, config)
    assert found["price_per_node_hour"] == round(1.127 * 1.115, 4)
    assert "derived: x 1.115" in found["price_note"]


def test_an_unknown_type_or_component_is_refused_naming_the_refresh_and_the_prices_setting():
    virginia = {"region": "us-east-1"}
    # ml.p3.8xlarge has a training price but no shipped hosting price
    assert cost.node_price("sagemaker", virginia, "ml.p3.8xlarge") == 14.688
    assert cost.node_price("sagemaker", virginia, "ml.m6i.large") == 0.115  # [J]
    for instance, component, where in (
        ("ml.p3.8xlarge", "hosting", "us-east-1"),
        ("ml.p3.2xlarge", "processing", "us-east-1"),  # a component no source gave
        ("ml.nope.xlarge", "processing", "eu-central-1"),  # priced in no region
    ):
        with pytest.raises(SpecError) as err:
            cost.node_price("sagemaker", {"region": where}, instance, 0, component)
        text = str(err.value)
        assert f"no price known for '{instance}' ({component} in {where})" in text
        assert "nbscale cost --refresh-prices" in text and f'prices = {{ "{instance}"' in text
    # a region without the type's price: the us-east-1 price stands in, with a note
    tokyo = {"region": "ap-northeast-1"}
    assert cost.node_price("sagemaker", tokyo, "ml.g6.xlarge") == 1.634  # its own
    assert cost.foreign_list_price("sagemaker", tokyo, "ml.g6.xlarge") is None
    assert cost.node_price("sagemaker", tokyo, "ml.g5.xlarge") == 1.408
    assert "us-east-1 list price" in cost.foreign_list_price("sagemaker", tokyo, "ml.g5.xlarge")[0]


def test_endpoints_take_the_hosting_price_and_processing_steps_the_processing_price(
    nbscale_home, tmp_path
):
    from nbscale import config as nbconfig

    (tmp_path / "nbscale.toml").write_text(
        '[backends.aws]\ntype = "sagemaker"\nregion = "us-east-1"\n'
        'role_arn = "arn:aws:iam::123456789012:role/train"\n'
        '\n[backends.own]\ntype = "sagemaker"\nregion = "us-east-1"\n'
        'role_arn = "arn:aws:iam::123456789012:role/train"\n'
        'prices = { "ml.c5.4xlarge" = 0.5, "ml.g5.xlarge" = 1.1 }\n'
    )
    config = nbconfig.load()
    # from the shipped list: ml.g6.2xlarge is hosted at its hosting price
    endpoint = cost.endpoint_estimate("aws", "ml.g6.2xlarge", instances=2, hours=10, config=config)
    assert endpoint["per_hour"] == pytest.approx(2.444) and endpoint["total"] == 24.44
    # ml.p3.8xlarge has a training price but no hosting one: refused, not priced as training
    with pytest.raises(SpecError, match=r"ml.p3.8xlarge' \(hosting in us-east-1\)"):
        cost.endpoint_estimate("aws", "ml.p3.8xlarge", config=config)
    # ml.g5.xlarge's hosting price (AWS's benchmarking tool, [I]) is not its training price
    assert cost.endpoint_estimate("aws", "ml.g5.xlarge", config=config)["per_hour"] == 1.4084
    # the backend's own prices come first, for every component
    assert cost.endpoint_estimate("own", "ml.g5.xlarge", config=config)["per_hour"] == 1.1

    def step(kind, instance, count=1, seconds=3600):
        key = "ProcessingResources" if kind == "Processing" else "ResourceConfig"
        cluster = {"InstanceType": instance, "InstanceCount": count}
        arguments = {key: {"ClusterConfig": cluster} if kind == "Processing" else cluster}
        arguments["StoppingCondition"] = {"MaxRuntimeInSeconds": seconds}
        return {"Name": f"{kind}-{instance}", "Type": kind, "Arguments": arguments}

    definition = {
        "Steps": [
            step("Processing", "ml.c5.4xlarge", 2),  # processing list price 0.816
            step("Processing", "ml.p3.2xlarge"),  # no processing price: unpriced
            step("Training", "ml.g6.2xlarge"),  # training list price 1.222
        ]
    }
    most = cost.definition_estimate(definition, "sagemaker", config.backend("aws").settings)
    assert [s["component"] for s in most["steps"]] == ["processing", "training"]
    assert most["at_most"] == pytest.approx(2 * 0.816 + 1.222)
    assert most["unpriced"] == ["Processing-ml.p3.2xlarge"]
    own = cost.definition_estimate(definition, "sagemaker", config.backend("own").settings)
    assert own["steps"][0]["price_per_instance_hour"] == 0.5

    # a refreshed file that prices the components apart: each estimate takes its own
    path = cost.user_price_file("sagemaker")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "regions": {
                    "us-east-1": {
                        "training": {"ml.m5.xlarge": 0.2},
                        "hosting": {"ml.m5.xlarge": 0.3},
                        "processing": {"ml.m5.xlarge": 0.4},
                    }
                }
            }
        )
    )
    assert cost.endpoint_estimate("aws", "ml.m5.xlarge", config=config)["per_hour"] == 0.3
    prep = cost.definition_estimate(
        {"Steps": [step("Processing", "ml.m5.xlarge"), step("Training", "ml.m5.xlarge")]},
        "sagemaker",
        config.backend("aws").settings,
    )
    assert [s["price_per_instance_hour"] for s in prep["steps"]] == [0.4, 0.2]


def test_the_user_price_file_comes_before_the_shipped_list(nbscale_home):
    path = cost.user_price_file("sagemaker")
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "regions": {
                    "eu-west-1": {"training": {"ml.m5.xlarge": 0.2576}},
                    "us-east-1": {"training": {"ml.m5.xlarge": 0.25}},
                }
            }
        )
    )
    ireland = {"region": "eu-west-1"}
    assert cost.node_price("sagemaker", ireland, "ml.m5.xlarge") == 0.2576
    assert cost.foreign_list_price("sagemaker", ireland, "ml.m5.xlarge") is None
    assert cost.node_price("sagemaker", {"region": "us-east-1"}, "ml.m5.xlarge") == 0.25
    # not in the file: the shipped list, and another region's price only with a note
    assert cost.node_price("sagemaker", ireland, "ml.g5.xlarge") == 1.57  # eu-west-1's own
    assert cost.foreign_list_price("sagemaker", ireland, "ml.g5.xlarge") is None
    # us-east-1's x eu-west-1's region factor
    assert cost.node_price("sagemaker", ireland, "ml.g6.xlarge") == round(1.127 * 1.115, 4)
    assert cost.foreign_list_price("sagemaker", ireland, "ml.g6.xlarge") is not None
    path.write_text("{not json")  # a broken file prices nothing and breaks nothing
    assert cost.node_price("sagemaker", {"region": "us-east-1"}, "ml.m5.xlarge") == 0.23


def test_warm_pool_retention_is_billed_on_top_of_the_job(priced):
    from types import SimpleNamespace

    record = SimpleNamespace(
        duration=3600.0,
        spec={"instance_type": "ml.g5.xlarge", "nodes": 2},
        backend="prod",
        backend_type="sagemaker",
        info={"billable_seconds": 3600, "retained_billable_seconds": 1800},
    )
    found = cost.record_costs(record, priced)
    # 2 x 1 h at 1.20 (the backend's price), and the warm pool kept both instances 1800 s
    # more (ResourceRetainedBillableTimeInSeconds is per instance) at the same price
    assert found["warm_pool_cost"] == pytest.approx(1.2)
    assert found["cost"] == pytest.approx(2.4 + 1.2)
    assert found["node_hours"] == pytest.approx(3.0)
    assert found["retained_billable_seconds"] == 1800
