"""Transforms inside MONAI Compose, CacheDataset and a 2-worker DataLoader; readers, splits and datalists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, load_decathlon_datalist
from monai.transforms import Compose

from shapeqc.bundle.datasets import (
    adrenalmnist3d_items,
    nifti_folder_items,
    split_items,
    totalsegmentator_tree_items,
    write_datalist,
)
from shapeqc.transforms import errors
from shapeqc.transforms.grid_transforms import ToCanonicalGridd
from shapeqc.transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd
from shapeqc.transforms.packing import PackedMask, PackGridd, UnpackGridd, pack_mask, unpack_mask


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (1, 64, 64, 64), (9,)])
def test_pack_unpack_is_exact(shape):
    mask = np.random.default_rng(0).random(shape) > 0.6
    packed = pack_mask(mask)
    assert packed.nbytes == -(-mask.size // 8)
    np.testing.assert_array_equal(unpack_mask(packed), mask.astype(np.uint8))


def _pipeline(grid_size=48):
    return Compose([
        LoadOrganMaskd("mask"),
        CheckOrganMaskd("mask", check_border=False),
        ToCanonicalGridd("mask", spacing_mm=1.5, grid_size=grid_size, margin=4, mirror_side="left"),
        PackGridd("mask"),
        UnpackGridd("mask"),
    ])


def test_cache_dataset_keeps_packed_grids_and_dataloader_with_two_workers(adrenal_npz):
    items = list(adrenalmnist3d_items(adrenal_npz, arrays=("val_images",)))[:8]
    for item in items:
        item["organ"] = "adrenal_gland_left"
    dataset = CacheDataset(items, transform=_pipeline(), cache_rate=1.0, num_workers=2, progress=False)
    cached = dataset._cache[0]
    assert isinstance(cached["mask"], PackedMask)  # the cache holds 1/8 of a uint8 grid
    assert cached["mask"].nbytes == 48**3 // 8
    loader = DataLoader(dataset, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    grid = batches[0]["mask"]
    assert isinstance(grid, torch.Tensor) and tuple(grid.shape) == (4, 1, 48, 48, 48)
    assert set(torch.unique(grid).tolist()) == {0, 1}
    assert batches[0]["case_id"] == [f"adrenalmnist3d_val_{i:04d}" for i in range(4)]
    # identical to running the transforms directly, without cache or workers
    direct = _pipeline()(items[5])["mask"]
    np.testing.assert_array_equal(batches[1]["mask"][1].numpy(), direct)


def test_bad_item_error_reaches_the_caller_from_a_worker(tmp_path, adrenal_npz):
    from monai.data import Dataset

    items = [{"case_id": "gone", "mask": str(tmp_path / "gone.nii.gz")}]
    loader = DataLoader(Dataset(items, transform=_pipeline()), batch_size=1, num_workers=2)
    with pytest.raises(Exception) as caught:
        list(loader)
    assert "gone.nii.gz" in str(caught.value)


def test_adrenalmnist_reader_ids_and_masks(adrenal_npz):
    items = list(adrenalmnist3d_items(adrenal_npz))
    assert len(items) == 1286
    assert items[0]["case_id"] == "adrenalmnist3d_train_0000"
    assert items[-1]["case_id"] == "adrenalmnist3d_val_0097"
    loaded = next(adrenalmnist3d_items(adrenal_npz, arrays=("val_images",), load=True))
    with np.load(adrenal_npz) as archive:
        np.testing.assert_array_equal(loaded["mask"], archive["val_images"][0] > 0)
    # the arrays' true frame: axes L, P, S at 1 mm (tests/test_anatomy_frames.py gives the evidence)
    np.testing.assert_array_equal(loaded["affine"], np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert items[0]["affine"] == np.diag([-1.0, -1.0, 1.0, 1.0]).tolist()


def test_splits_are_deterministic_grouped_and_order_free(adrenal_npz):
    items = list(adrenalmnist3d_items(adrenal_npz))
    a = split_items(items, seed=3, val_fraction=0.1, test_fraction=0.1)
    b = split_items(list(reversed(items)), seed=3, val_fraction=0.1, test_fraction=0.1)
    c = split_items(items, seed=4, val_fraction=0.1, test_fraction=0.1)
    ids = {name: [it["case_id"] for it in entries] for name, entries in a.items()}
    assert ids == {name: [it["case_id"] for it in entries] for name, entries in b.items()}
    assert ids != {name: [it["case_id"] for it in entries] for name, entries in c.items()}
    assert [len(v) for v in ids.values()] == [1028, 129, 129]
    assert not set(ids["training"]) & set(ids["validation"])
    # two organs of one case never straddle splits
    organs = [{"case_id": f"s{i}", "organ": o} for i in range(20) for o in ("liver", "spleen")]
    grouped = split_items(organs, seed=0, val_fraction=0.25)
    for name, entries in grouped.items():
        other = {e["case_id"] for n, es in grouped.items() if n != name for e in es}
        assert not {e["case_id"] for e in entries} & other


def test_datalist_json_loads_with_monai(tmp_path, adrenal_npz):
    splits = split_items(list(adrenalmnist3d_items(adrenal_npz, arrays=("val_images",))), seed=0)
    path = write_datalist(splits, tmp_path / "datalist.json")
    training = load_decathlon_datalist(str(path), data_list_key="training")
    assert len(training) == len(splits["training"])
    assert set(json.loads(path.read_text())) == {"training", "validation"}
    item = LoadOrganMaskd("mask")(training[0])
    assert item["mask"].shape == (64, 64, 64)


def test_totalsegmentator_tree_and_nifti_folder_readers(tmp_path, totalseg):
    for case in ("case_b", "case_a"):
        (tmp_path / "tree" / case).mkdir(parents=True)
        for organ in ("adrenal_gland_left", "liver"):
            (tmp_path / "tree" / case / f"{organ}.nii.gz").symlink_to(totalseg / "v1_per_organ" / f"{organ}.nii.gz")
    items = list(totalsegmentator_tree_items(tmp_path / "tree", ["adrenal_gland_left", "liver", "spleen"]))
    assert [(it["case_id"], it["organ"]) for it in items][:3] == [
        ("case_a", "adrenal_gland_left"), ("case_a", "liver"), ("case_a", "spleen")]
    loaded = LoadOrganMaskd("mask")(items[0])
    assert int(loaded["mask"].sum()) == 223
    with pytest.raises(errors.UnknownOrganError, match="spleen"):
        LoadOrganMaskd("mask")(items[2])  # listed, then reported: never silently dropped

    folder = list(nifti_folder_items(totalseg / "v1_per_organ"))
    assert len(folder) == 104 and folder[0]["case_id"] == "adrenal_gland_left"


def test_persistent_dataset_keeps_packed_grids_on_disk(tmp_path, adrenal_npz):
    from monai.data import PersistentDataset

    items = list(adrenalmnist3d_items(adrenal_npz, arrays=("val_images",)))[:3]
    dataset = PersistentDataset(items, transform=_pipeline(grid_size=128), cache_dir=tmp_path / "cache")
    first = dataset[0]["mask"]
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1
    # a 128^3 grid is 2 MiB as uint8: the cached item holds the 256 KiB packed form
    assert files[0].stat().st_size < 128**3 // 8 + 64 * 1024
    np.testing.assert_array_equal(PersistentDataset(items, transform=_pipeline(grid_size=128),
                                                    cache_dir=tmp_path / "cache")[0]["mask"], first)
