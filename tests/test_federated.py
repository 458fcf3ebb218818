"""Federated training with NVIDIA FLARE: a real simulator run of the parotid bundle's own train.yaml at two sites
(two real masks each), the site split, the federated bundle, and sites whose datalist is unusable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shapeqc.bundle.datasets import headneck_tree_items
from shapeqc.bundle.loading import bundle_datalist, bundle_parser
from shapeqc.federated.client import SITE_RECORD, read_site_datalist
from shapeqc.federated.job import (
    FederatedRunError,
    SiteDataError,
    simulate,
    site_datalists,
    write_federated_bundle,
    write_job,
)

REPO = Path(__file__).resolve().parents[1]
PAROTID = REPO / "bundles" / "parotid_gland"
# two of the parotid bundle's training scans (both glands usable in each)
TWO_SCANS = ("0522c0017", "0522c0057")


@pytest.fixture(scope="module")
def parotid_training(headneck_tree) -> list[dict]:
    """The parotid bundle's own training split (its train#datalist): 40 glands of 20 scans."""
    return bundle_datalist(PAROTID, str(headneck_tree.parents[1]), "train#datalist")


@pytest.fixture(scope="module")
def two_scans(headneck_tree) -> dict[str, list[dict]]:
    """{scan: its two parotid glands (oncologist)} for TWO_SCANS, without reading every mask of the split."""
    items = list(headneck_tree_items(headneck_tree, ["parotid_gland_left", "parotid_gland_right"],
                                     raters=("oncologist",)))
    return {scan: [item for item in items if item["scan"] == scan] for scan in TWO_SCANS}


def _site_file(folder: Path, name: str, items: list[dict]) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"training": [{**item, "mask": str(Path(item["mask"]).resolve())} for item in items]}))
    return path


def test_site_split_keeps_scans_whole_and_loses_nothing(parotid_training, headneck_tree, tmp_path):
    paths = site_datalists(PAROTID, str(headneck_tree.parents[1]), 3, tmp_path)
    sites = {name: json.loads(path.read_text())["training"] for name, path in paths.items()}
    assert sorted(sites) == ["site-1", "site-2", "site-3"]
    scans = {name: {item["scan"] for item in items} for name, items in sites.items()}
    assert not scans["site-1"] & scans["site-2"] and not scans["site-2"] & scans["site-3"]
    assert not scans["site-1"] & scans["site-3"]
    listed = sorted(item["case_id"] + item["organ"] for items in sites.values() for item in items)
    assert listed == sorted(item["case_id"] + item["organ"] for item in parotid_training)
    assert max(len(s) for s in scans.values()) - min(len(s) for s in scans.values()) <= 1
    assert all(Path(item["mask"]).is_absolute() for items in sites.values() for item in items)
    # the same seed gives the same sites
    again = site_datalists(PAROTID, str(headneck_tree.parents[1]), 3, tmp_path / "again")
    assert all(again[name].read_text() == paths[name].read_text() for name in paths)


@pytest.mark.parametrize("content, reason", [
    (None, "does not exist"),
    ("{not json", "is unreadable"),
    ('{"validation": []}', "no 'training' list"),
    ('{"training": []}', "lists no training masks"),
])
def test_an_unusable_site_datalist_names_the_site_and_the_file(tmp_path, content, reason):
    path = tmp_path / "hospital_b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SiteDataError, match=reason) as caught:
        read_site_datalist("site-2", str(path))
    assert "site-2" in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.slow
def test_two_simulated_sites_train_the_bundle_and_the_server_averages(two_scans, tmp_path):
    """NVFlare's simulator, 2 sites x 2 real glands, 2 rounds of 1 epoch: both sites train each round, the global
    model moves away from the initial one, loads into the bundle's network_def and becomes a bundle."""
    sites = {"site-1": _site_file(tmp_path, "site-1", two_scans[TWO_SCANS[0]]),
             "site-2": _site_file(tmp_path, "site-2", two_scans[TWO_SCANS[1]])}
    job = write_job(PAROTID, sites, rounds=2, local_epochs=1, out_dir=tmp_path / "fl", threads=1)
    assert (job / "meta.json").is_file() and (job / "app_server" / "custom" / "initial_model.pt").is_file()
    # the client apps carry only the stub: no partial copy of shapeqc that would shadow the installed package
    assert not list(job.rglob("custom/shapeqc"))

    model = simulate(tmp_path / "fl")

    for site in sites:
        [record_file] = (tmp_path / "fl" / "simulation").rglob(f"{site}/**/{SITE_RECORD}")
        record = json.loads(record_file.read_text())
        assert record["training_masks"] == 2
        assert [entry["round"] for entry in record["rounds"]] == [0, 1]
        assert all(entry["steps"] == 1 for entry in record["rounds"])
    initial = torch.load(tmp_path / "fl" / "initial_model.pt", weights_only=True)
    final = torch.load(model, weights_only=True)["model"]
    changed = [name for name in initial if initial[name].is_floating_point()
               and not torch.equal(initial[name], torch.as_tensor(final[name]))]
    assert len(changed) > len(initial) // 2

    bundle = write_federated_bundle(PAROTID, model, tmp_path / "parotid_fed", sites=2, rounds=2, local_epochs=1)
    network = bundle_parser(bundle).get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    base = json.loads((PAROTID / "configs" / "metadata.json").read_text())
    assert metadata["version"] != base["version"]
    assert metadata["changelog"][metadata["version"]].startswith("federated, 2 sites, 2 rounds")
    assert not (bundle / "configs" / "thresholds.json").exists()


@pytest.mark.slow
def test_a_site_with_an_empty_datalist_fails_the_run_with_its_name_not_a_hang(two_scans, tmp_path):
    sites = {"site-1": _site_file(tmp_path, "site-1", two_scans[TWO_SCANS[0]]),
             "site-2": _site_file(tmp_path, "site-2", [])}
    write_job(PAROTID, sites, rounds=1, local_epochs=1, out_dir=tmp_path / "fl", threads=1)
    with pytest.raises(FederatedRunError, match="site-2: datalist .*site-2.json lists no training masks"):
        simulate(tmp_path / "fl")
