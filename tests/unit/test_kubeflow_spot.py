"""``--spot`` on Kubeflow, in-process: the spot settings' checks, spot prices and savings in the cost."""

from __future__ import annotations

import time

import pytest

from nbscale import config as nbconfig
from nbscale import cost
from nbscale.backends.kubeflow.settings import settings
from nbscale.config import BackendConfig
from nbscale.errors import SpecError
from nbscale.store import get_store
from nbscale.store.jobs import SUCCEEDED, JobRecord, insert_job


def test_spot_settings_are_checked(tmp_path):
    def conf(**kw):
        return settings(BackendConfig("kf", "kubeflow", {"storage": "s3://b/p", **kw}))

    s = conf(
        spot_node_selector={"cloud.google.com/gke-spot": "true"},
        spot_tolerations=[{"key": "spot", "operator": "Exists"}],
        checkpoint_volume="ckpts",
        spot_prices={"g5.xlarge": 0.4},
        spot_discount=0.6,
    )
    assert s.spot_node_selector == {"cloud.google.com/gke-spot": "true"}
    assert s.checkpoint_volume == "ckpts"
    s.require_spot()
    with pytest.raises(SpecError, match="no spot nodes configured.*spot_node_selector"):
        conf().require_spot()
    for bad, match in (
        ({"spot_tolerations": [{"key": "spot", "when": "always"}]}, "spot_tolerations"),
        ({"spot_node_selector": {"a": 1}}, "spot_node_selector"),
        ({"checkpoint_volume": "Not_A_Name"}, "checkpoint_volume"),
        ({"spot_discount": 1.5}, "spot_discount"),
        ({"spot_prices": {"g5.xlarge": -1}}, "spot_prices.g5.xlarge"),
        ({"prices": "cheap"}, "prices"),
        ({"gpu_hour_price": "x"}, "gpu_hour_price"),
    ):
        with pytest.raises(SpecError, match=match):
            conf(**bad)


KF_PRICED = """
[backends.kf]
type = "kubeflow"
storage = "s3://b/p"
prices = { "g5.xlarge" = 1.0 }
spot_prices = { "g5.xlarge" = 0.4 }
spot_discount = 0.5
"""


def _kf_record(job_id: str, seconds: float, **spec) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=job_id,
        name="train",
        backend="kf",
        backend_type="kubeflow",
        status=SUCCEEDED,
        spec={"nodes": 2, "tags": {}, **spec},
        created=now - seconds - 10,
        started=now - seconds,
        ended=now,
    )


def test_spot_prices_and_savings_on_kubeflow(tmp_path):
    (tmp_path / "nbscale.toml").write_text(KF_PRICED)
    conf = nbconfig.load()
    settings(conf.backend("kf"))  # the price keys are settings of the backend
    # estimates: the spot price of the instance type, else the discount
    on = cost.spec_estimate({"backend": "kf", "nodes": 2, "instance_type": "g5.xlarge"}, conf)
    spot = cost.spec_estimate(
        {"backend": "kf", "nodes": 2, "instance_type": "g5.xlarge", "spot": True}, conf
    )
    assert (on["per_hour"], spot["per_hour"]) == (2.0, 0.8)
    other = cost.spec_estimate(
        {"backend": "kf", "nodes": 1, "gpus_per_proc": 1, "spot": True}, conf
    )
    assert other["price_per_node_hour"] == pytest.approx((0.20 + 2.50) * 0.5)
    # actual: 1.5 h on 2 spot nodes at 0.4, against 1.0 on demand
    store = get_store()
    insert_job(store, _kf_record("kf-spot", 5400, instance_type="g5.xlarge", spot=True))
    insert_job(store, _kf_record("kf-on", 3600, instance_type="g5.xlarge"))
    c = cost.record_costs(store_job("kf-spot"), conf)
    assert c["cost"] == pytest.approx(1.5 * 2 * 0.4, abs=1e-3)
    assert c["on_demand_cost"] == pytest.approx(1.5 * 2 * 1.0, abs=1e-3)
    assert c["spot_savings"] == pytest.approx(1.5 * 2 * 0.6, abs=1e-3) and c["spot"]
    c = cost.record_costs(store_job("kf-on"), conf)
    assert c["spot_savings"] == 0.0 and c["cost"] == pytest.approx(2.0, abs=1e-3)
    report = cost.cost_report(by="backend", config=conf)
    assert report["total"]["spot_savings"] == pytest.approx(1.8, abs=1e-3)


def store_job(job_id: str) -> JobRecord:
    from nbscale.store.jobs import get_job

    return get_job(get_store(), job_id)
