"""Surface-distance scores against an independent computation on real masks, and the edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from shapeqc.scoring.metrics import occupied_box
from shapeqc.scoring.surface_metrics import shape_scores
from shapeqc.transforms.corruption import RandPerlinCorruptiond


def independent_scores(a, b, spacing):
    """Border by erosion (6-connectivity, outside = background), distances by a Euclidean distance transform of the
    whole volume (shapeqc measures them with a k-d tree on a box), areas by face counts."""
    spacing = np.asarray(spacing, float)
    structure = ndimage.generate_binary_structure(3, 1)

    def surface(mask):
        border = mask & ~ndimage.binary_erosion(mask, structure, border_value=0)
        padded = np.pad(mask, 1).astype(int)
        area = np.zeros(mask.shape)
        for axis, face in enumerate((spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1])):
            step = np.diff(padded, axis=axis)
            lower = [slice(1, -1)] * 3
            lower[axis] = slice(0, -1)
            upper = [slice(1, -1)] * 3
            upper[axis] = slice(1, None)
            area += ((step[tuple(lower)] == 1).astype(int) + (step[tuple(upper)] == -1).astype(int)) * face
        return border, area[border]

    border_a, wa = surface(a)
    border_b, wb = surface(b)
    da = ndimage.distance_transform_edt(~border_b, sampling=spacing)[border_a]
    db = ndimage.distance_transform_edt(~border_a, sampling=spacing)[border_b]

    def percentile(d, w):
        order = np.argsort(d)
        cumulative = np.cumsum(w[order])
        return d[order][min(np.searchsorted(cumulative, 0.95 * cumulative[-1]), len(d) - 1)]

    return (0.5 * (np.average(da, weights=wa) + np.average(db, weights=wb)),
            max(percentile(da, wa), percentile(db, wb)), max(da.max(), db.max()))


@pytest.mark.parametrize("index, spacing", [(0, (1.0, 1.0, 1.0)), (3, (0.8, 0.8, 2.5)), (7, (1.5, 0.7, 3.0))])
def test_scores_match_an_independent_computation_on_real_masks(adrenal_val_masks, index, spacing):
    clean = np.zeros((96, 96, 96), bool)
    clean[16:80, 16:80, 16:80] = adrenal_val_masks[index]
    corrupt = RandPerlinCorruptiond("m", add_prob=1.0, remove_prob=1.0)
    corrupt.set_random_state(index)
    corrupted = corrupt({"m": clean.astype(np.uint8)})["m"] > 0
    scores = shape_scores(clean, corrupted, spacing)
    asd, hd95, max_sd = independent_scores(clean, corrupted, spacing)
    assert scores.asd_mm == pytest.approx(asd, rel=1e-9)
    assert scores.hd95_mm == pytest.approx(hd95, rel=1e-9)
    assert scores.max_sd_mm == pytest.approx(max_sd, rel=1e-9)
    assert 0 < scores.dice < 1 and scores.asd_mm > 0


def test_identical_empty_and_one_empty():
    mask = np.zeros((10, 10, 10), bool)
    mask[3:7, 3:7, 3:7] = True
    assert shape_scores(mask, mask).to_dict() == {"dice": 1.0, "asd_mm": 0.0, "hd95_mm": 0.0, "max_sd_mm": 0.0}
    empty = np.zeros_like(mask)
    assert shape_scores(empty, empty).to_dict() == {"dice": 1.0, "asd_mm": 0.0, "hd95_mm": 0.0, "max_sd_mm": 0.0}
    one_empty = shape_scores(mask, empty)
    assert one_empty.dice == 0.0 and one_empty.asd_mm == one_empty.hd95_mm == one_empty.max_sd_mm == float("inf")


def test_spacing_is_used():
    a = np.zeros((12, 12, 12), bool)
    a[3:8, 3:8, 3:8] = True
    b = np.roll(a, 1, axis=2)  # shifted one voxel along axis 2
    assert shape_scores(a, b, (1.0, 1.0, 2.5)).max_sd_mm == pytest.approx(2.5)
    assert shape_scores(a, b, (1.0, 1.0, 1.0)).max_sd_mm == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        shape_scores(a, b[:-1])


def test_masks_touching_the_array_border():
    a = np.zeros((8, 8, 8), bool)
    a[0:4, 0:8, 2:5] = True
    b = a.copy()
    b[4, :, 2:5] = True
    scores = shape_scores(a, b)
    asd, hd95, max_sd = independent_scores(a, b, (1.0, 1.0, 1.0))
    assert (scores.asd_mm, scores.hd95_mm, scores.max_sd_mm) == pytest.approx((asd, hd95, max_sd))


@pytest.mark.parametrize("margin, expected", [
    (0, (slice(3, 5), slice(0, 2), slice(13, 14))),
    (1, (slice(2, 6), slice(0, 3), slice(12, 14))),      # clipped at both faces of the volume
    ((1, 0, 2), (slice(2, 6), slice(0, 2), slice(11, 14))),
])
def test_occupied_box_holds_every_voxel_of_every_mask_and_stays_in_the_volume(margin, expected):
    a = np.zeros((10, 12, 14), bool)
    b = np.zeros_like(a)
    a[3, 0:2, 13] = True
    b[4, 1, 13] = True
    assert occupied_box(a, b, margin=margin) == expected
    assert occupied_box(np.zeros_like(a)) == (slice(0, 0),) * 3
