"""The shipped SageMaker image table against the SageMaker SDK's own ``image_uris`` data.

``sagemaker-core`` (a test-only dependency, the ``test`` extra) ships
``sagemaker/core/image_uri_config/pytorch.json``: for each PyTorch version of the AWS Deep
Learning Containers, its Python, processors, repository and the registry account of every
region it is published in. Every image nbscale would pick must be one the SDK would name
(same account, region, repository and tag), and no region the SDK lists may be missing.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from nbscale.backends.images import Versions, major_minor
from nbscale.backends.sagemaker import images as sm_images


@pytest.fixture(scope="module")
def sdk() -> dict:
    # the distribution's file, read without importing the SDK
    found = metadata.distribution("sagemaker-core").locate_file(
        "sagemaker/core/image_uri_config/pytorch.json"
    )
    return json.loads(Path(found).read_text())


def shipped() -> dict:
    return json.loads(sm_images.TABLE.read_text())


def test_every_region_account_is_the_sdks(sdk):
    table = shipped()["accounts"]
    sdk_accounts: dict[str, set[str]] = {}
    for entry in shipped()["entries"]:
        for region, account in sdk["training"]["versions"][entry["torch"]]["registries"].items():
            sdk_accounts.setdefault(region, set()).add(account)
    assert set(table) == set(sdk_accounts)
    for region, account in table.items():
        assert sdk_accounts[region] == {account}, region
    # the point of the table: many regions are not the 763104351884 registry
    others = {r for r, a in table.items() if a != "763104351884"}
    assert len(others) >= 20 and {"af-south-1", "ap-east-1", "me-south-1"} <= others


def test_every_image_is_the_one_the_sdk_names_in_every_region_it_lists(sdk):
    data = shipped()
    for entry in data["entries"]:
        version = sdk[entry["scope"]]["versions"][entry["torch"]]
        py = "py" + entry["python"].replace(".", "")
        assert version["py_versions"] == [py], entry["name"]
        assert entry["repository"] == version["repository"]
        assert set(entry["processors"]) <= set(sdk[entry["scope"]]["processors"])
        listed = set(version["registries"])
        ours = set(data["accounts"]) - set(entry["missing_regions"])
        assert ours == listed, entry["name"]
        want = Versions(major_minor(entry["torch"]), entry["python"])
        for region in sorted(listed):
            account = version["registries"][region]
            for processor in entry["processors"]:
                uri = sm_images.stock_image(
                    entry["scope"], region, processor == "gpu", "image", want
                )
                domain = sm_images.dns_suffix(region)
                # the SDK's tag: {version}-{processor}-{py_version}
                assert uri == (
                    f"{account}.dkr.ecr.{region}.{domain}/{version['repository']}:"
                    f"{entry['torch']}-{processor}-{py}"
                ), (entry["name"], region)


def test_the_table_holds_the_sdks_newest_training_image_of_each_torch_minor(sdk):
    """A newer DLC in the SDK than in the table is a gap: each torch minor from 2.3 on that
    the SDK has is in the table, at the SDK's alias for that minor."""
    aliases = sdk["training"]["version_aliases"]
    ours = {major_minor(e["torch"]): e["torch"] for e in shipped()["entries"]}
    for minor, version in aliases.items():
        if tuple(int(p) for p in minor.split(".")) >= (2, 3):
            assert ours.get(minor) == version, minor
