"""Anatomy checks of a data source's frame: is what reaches the canonical grid in true RAS?

A mask file's affine says where its voxels lie; a wrong or missing affine (the AdrenalMNIST3D arrays carry none,
20 LiTS volumes carry a default one) turns organs into mirror images that no test on the same data can notice.
These measures read a mask in world millimetres (RAS+: +x the patient's right, +y anterior, +z superior) and
give shape signatures whose signs anatomy fixes, to compare a source with a reference known to be in true RAS
(TotalSegmentator's output; the evalseg ground truth, whose axis signs were set from neighbouring organs):

- :func:`third_moments`: the skewness of the organ's voxels along R, A and S. A liver's bulk lies to the right
  and above its thin left lobe tip (negative R and S skew); a spleen's lateral and anterior tails; an adrenal
  gland's body lies in front of its limbs (negative A skew).
- :func:`pole_correlations`: how the organ's superior-inferior extent leans: a kidney's upper pole lies medial
  and posterior to its lower pole (as a left kidney: corr(S, R) > 0, corr(S, A) < 0).

The results, per source, are in docs/anatomy_audit.md; tests/test_anatomy_frames.py pins each source's frame.
"""

from __future__ import annotations

import numpy as np


def world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(N, 3) float64 world coordinates in mm (the affine's space, RAS+ for NIfTI) of the mask's voxel centres."""
    voxels = np.argwhere(mask).astype(np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def third_moments(points: np.ndarray) -> np.ndarray:
    """(3,) skewness of ``points`` (N, 3) along each world axis (R, A, S): the sign says on which side of its
    mean the organ's long tail lies."""
    centred = points - points.mean(axis=0)
    spread = centred.std(axis=0)
    return (centred**3).mean(axis=0) / np.where(spread > 0, spread**3, 1.0)


def pole_correlations(points: np.ndarray) -> tuple[float, float]:
    """(corr(S, R), corr(S, A)) over ``points`` (N, 3): how the organ leans from its inferior to its superior end."""
    return (float(np.corrcoef(points[:, 2], points[:, 0])[0, 1]),
            float(np.corrcoef(points[:, 2], points[:, 1])[0, 1]))
