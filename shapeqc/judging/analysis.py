"""Analysis of one organ of one case: load, reconstruct with the bundle's shape prior, score, decide, localize.

The result is a :class:`shapeqc.outputs.records.Record` (the schema every report reads). Before the prior, an organ far
below the bundle's smallest training organ or in more parts than any training organ is an ``outlier`` with reason
``implausible`` (bounds stored in thresholds.json by the calibration).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from shapeqc.bundle.loading import Bundle
from shapeqc.outputs.figures import write_overview, write_stl
from shapeqc.outputs.images import image_on_grid
from shapeqc.outputs.records import Record, new_record
from shapeqc.outputs.viewer import viewer_box, viewer_key, write_viewer_data
from shapeqc.prior.refinement import refined_network
from shapeqc.scoring.defects import defect_components, difference_map
from shapeqc.scoring.metrics import occupied_box
from shapeqc.scoring.quality import predict_quality, quality_features
from shapeqc.scoring.surface_metrics import shape_scores
from shapeqc.scoring.thresholds import OBLIQUE_DEG, coarse_input_warning, decide, obliquity_deg, select_profile
from shapeqc.transforms.boxes import box_affine
from shapeqc.transforms.canonical_grid import CanonicalGrid
from shapeqc.transforms.errors import (
    EmptyMaskError,
    OrganAbsentError,
    SegmentationInputError,
    TruncatedOrganError,
)
from shapeqc.transforms.organ_loading import check_organ_mask, load_organ_mask
from shapeqc.transforms.volume_io import VolumeFile, voxel_spacing, write_volume


def reconstruct_in_source(bundle: Bundle, mask: np.ndarray, affine: np.ndarray, organ: str,
                          timings: dict) -> tuple[np.ndarray, CanonicalGrid]:
    """The bundle's reconstruction of ``mask`` (D, H, W) as a bool mask in the same voxel space, through the
    bundle config's own ``to_grid``, ``inferer`` and ``to_source`` (what ``monai.bundle run`` writes)."""
    start = time.perf_counter()
    item = bundle.to_grid({"mask": mask.astype(np.uint8), "affine": affine, "organ": organ})
    grid = torch.as_tensor(np.asarray(item["mask"]), dtype=torch.float32)[None].to(bundle.device)
    timings["normalize"] = time.perf_counter() - start
    network = bundle.network
    if bundle.refine_steps:
        start = time.perf_counter()
        network = refined_network(network, grid, bundle.refine_steps)
        timings["refine"] = time.perf_counter() - start
    with torch.no_grad():
        logits = bundle.inferer(grid, network, timings=timings)
    start = time.perf_counter()
    restored = bundle.to_source({"pred": logits[0].cpu(), "grid": item["grid"]})["pred"]
    timings["map_back"] = time.perf_counter() - start
    return np.asarray(restored).astype(bool), CanonicalGrid.from_dict(item["grid"])


def score_organ(bundle: Bundle, mask: np.ndarray, affine: np.ndarray, organ: str,
                timings: dict) -> tuple[np.ndarray, dict]:
    """(reconstruction in the input's voxel space, scores {dice, asd_mm, hd95_mm, max_sd_mm} in mm)."""
    reconstruction, _ = reconstruct_in_source(bundle, mask, affine, organ, timings)
    start = time.perf_counter()
    scores = shape_scores(mask, reconstruction, voxel_spacing(affine)).to_dict()
    timings["scores"] = time.perf_counter() - start
    return reconstruction, scores


# a part of an organ counts for plausibility when it holds at least this fraction of the organ's voxels: real
# segmentations and reconstructions carry specks of a few voxels that say nothing about the organ's shape
SUBSTANTIAL_PART = 0.05
# the reason code of an organ judged without a usable threshold profile: no threshold, no verdict
UNCALIBRATED = "uncalibrated"
# how the reason of an organ that cannot be the bundle's organ begins (volume or parts): kept when re-judged
IMPLAUSIBLE = "implausible"


def substantial_parts(mask: np.ndarray) -> int:
    """How many 26-connected parts of ``mask`` (D, H, W) bool hold at least :data:`SUBSTANTIAL_PART` of its voxels."""
    from scipy import ndimage

    mask = np.asarray(mask)
    if mask.strides[0] < mask.strides[-1]:  # Fortran-ordered (a NIfTI crop): labelled twice as fast transposed
        mask = np.ascontiguousarray(mask.T)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= SUBSTANTIAL_PART * sizes.sum()).sum())


def implausible(mask: np.ndarray, affine: np.ndarray, bounds: dict | None) -> str | None:
    """Why ``mask`` (D, H, W) bool cannot be the bundle's organ, judged before the prior: its volume in mm^3 far
    below the smallest training organ's, or more substantial parts (:func:`substantial_parts`) than any training
    organ has (``bounds``: ``{"min_volume_mm3", "max_components"}`` stored in thresholds.json by the calibration);
    None when plausible or the bundle has no bounds."""
    if not bounds:
        return None
    volume = float(mask.sum()) * float(abs(np.linalg.det(np.asarray(affine)[:3, :3])))
    if volume < bounds["min_volume_mm3"]:
        return (f"{IMPLAUSIBLE}: {volume:.0f} mm^3, below the bundle's smallest plausible organ "
                f"({bounds['min_volume_mm3']:.0f} mm^3)")
    if bounds["max_components"] == float("inf"):  # volume alone asked: labelling a liver's parts costs 0.3 s
        return None
    components = substantial_parts(mask)
    if components > bounds["max_components"]:
        return (f"{IMPLAUSIBLE}: {components} separate parts of 5% or more, more than any training organ has "
                f"({bounds['max_components']})")
    return None


def verdict(scores: dict, profile: dict | None, in_pieces: str | None) -> tuple[str, bool | None, str | None]:
    """(status, outlier, reason) of an organ the prior reconstructed: its ``scores`` judged under ``profile``
    (:func:`shapeqc.scoring.thresholds.decide`), and flagged whatever the scores when ``in_pieces`` (an
    :func:`implausible` reason) says the mask cannot be the organ. The one place a record's verdict is composed:
    analysis and a cohort's re-judging (:mod:`shapeqc.runs.cohort_calibration`) both call it."""
    outlier, past = decide(scores, profile)
    reason = (f"{UNCALIBRATED}: the bundle has no usable threshold profile (configs/thresholds.json missing, or "
              "left by an interrupted calibration); calibrate it (shapeqc calibrate)" if outlier is None
              else ", ".join(f"{m} past threshold" for m in past) or None)
    if in_pieces:
        outlier, reason = True, "; ".join(r for r in (in_pieces, reason) if r and not r.startswith(UNCALIBRATED))
    return ("not_judged" if outlier is None else "outlier" if outlier else "ok"), outlier, reason


def implausible_reason(record: dict) -> str | None:
    """The :func:`implausible` part of a judged record's reason (None when it has none)."""
    parts = [part for part in (record.get("reason") or "").split("; ") if part.startswith(IMPLAUSIBLE)]
    return "; ".join(parts) or None


def analyse_organ(source: str | VolumeFile, organ: str | None, bundle: Bundle, out_dir: str | os.PathLike | None,
                  case: str, map_version: str = "auto", min_defect_ml: float = 0.01, image: VolumeFile | None = None,
                  image_warning: str | None = None) -> Record:
    """Analyse one organ of ``source`` (a path, or a :class:`VolumeFile` already read); never raises for bad
    input: the record says ``error`` or ``not_judged``. ``image``: the image the segmentation was drawn on (read
    once per case), shown under the pictures when it lies on the organ's grid (else a warning says why not);
    ``image_warning``: why the case's image could not be read."""
    started = time.perf_counter()
    timings: dict = {}
    record = new_record(case, source, organ, bundle.name, bundle.digest)
    try:
        start = time.perf_counter()
        mask, affine, _ = load_organ_mask(source, organ=organ, map_version=map_version,
                                          labels=bundle.organ_labels.get(organ or ""))
        check_organ_mask(mask, f"{source} [{organ}]" if organ else source)
        timings["load"] = time.perf_counter() - start
        picture = None
        if image is not None:
            picture, image_warning = image_on_grid(image, mask.shape, affine)
        if image_warning:
            record["warnings"].append(image_warning)
        bounds = (bundle.thresholds or {}).get("plausibility")
        organ_box = mask[occupied_box(mask)]
        too_small = implausible(organ_box, affine, bounds and {**bounds, "max_components": float("inf")})
        if too_small:  # nothing for the prior to reconstruct: judged without it
            record.update(status="outlier", outlier=True, reason=too_small, thresholds={"plausibility": bounds})
            return _finish(record, timings, started)
        in_pieces = implausible(organ_box, affine, bounds)  # judged with the prior too, so the defects are located
        reconstruction, scores = score_organ(bundle, mask, affine, organ or "", timings)
        start = time.perf_counter()
        spacing = voxel_spacing(affine)
        box = occupied_box(mask, reconstruction)
        difference_in_box = difference_map(mask[box], reconstruction[box])
        defects = defect_components(difference_in_box, affine, min_defect_ml, offset=tuple(s.start for s in box))
        timings["metrics"] = time.perf_counter() - start
        profile = select_profile(bundle.thresholds, spacing, obliquity_deg(affine) > OBLIQUE_DEG)
        if coarse := coarse_input_warning(bundle.thresholds, spacing):
            record["warnings"].append(coarse)
        estimator = (profile or {}).get("quality_estimator")
        if estimator:
            features = quality_features(mask[box], reconstruction[box], scores)
            record["quality"] = {**predict_quality(estimator, features), "features": features}
        else:
            record["warnings"].append("no quality estimate: the bundle's calibration profile has no quality "
                                      "estimator (calibrated before it existed); recalibrate the bundle")
        status, outlier, reason = verdict(scores, profile, in_pieces)
        judged_against = {k: v for k, v in profile.items() if k != "quality_estimator"} if profile else None
        record.update(scores=scores, outlier=outlier, thresholds=judged_against, defects=[d.to_dict() for d in defects],
                      status=status, reason=reason)
        if out_dir is not None:
            start = time.perf_counter()
            out_dir = Path(out_dir)
            offset = np.array([s.start for s in box])
            if defects:  # through the largest defect, in voxel indices
                centre = np.linalg.solve(affine[:3, :3], np.asarray(defects[0].centroid_mm) - affine[:3, 3])
            else:  # through the organ's centre (segmentation and reconstruction together)
                centre = np.argwhere(mask[box] | reconstruction[box]).mean(axis=0) + offset
            stl = write_stl(reconstruction[box], box_affine(affine, box), out_dir / "reconstruction.stl")
            # whole-scan volumes (they overlay the CT in any viewer), in the file's own (Fortran) order as the map
            # back returns the reconstruction, so that writing them is a copy, not a transposition of 50 M voxels
            difference = np.zeros(mask.shape, dtype=np.uint8, order="F")
            difference[box] = difference_in_box
            record["outputs"] = {
                "reconstruction": str(write_volume(out_dir / "reconstruction.nii.gz", reconstruction, affine)),
                "difference": str(write_volume(out_dir / "difference.nii.gz", difference, affine)),
                "stl": str(stl) if stl else None,
                "overview": str(write_overview(mask, reconstruction, affine, centre, out_dir / "overview.png",
                                               f"{case} {organ or ''} {record['status']}",
                                               picture.array if picture else None,
                                               picture.window if picture else None)),
                "viewer": str(write_viewer_data(
                    out_dir / "viewer_data.js", viewer_key(record), viewer_box(box, mask.shape, spacing), affine,
                    mask, reconstruction, difference, picture.array if picture else None,
                    picture.window if picture else None)),
                "image": str(picture.path) if picture else None,
            }
            timings["outputs"] = time.perf_counter() - start
    except (EmptyMaskError, TruncatedOrganError, OrganAbsentError) as error:
        record.update(status="not_judged", reason=f"{error.code}: {error.reason}")
    except SegmentationInputError as error:
        record.update(status="error", reason=f"{error.code}: {error}")
    except MemoryError:
        record.update(status="error", reason=f"MemoryError: not enough memory to analyse {source} [{organ}]")
    except Exception as error:  # a batch must go on: record anything unexpected with its type
        record.update(status="error", reason=f"{type(error).__name__}: {error}")
    return _finish(record, timings, started)


def _finish(record: Record, timings: dict, started: float) -> Record:
    record["timings"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()}
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record
