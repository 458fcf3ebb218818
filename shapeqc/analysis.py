"""Analysis of one organ of one case: load, reconstruct with the bundle's shape prior, score, decide, localize.

A record (plain dict, JSON-ready) has: ``case``, ``input``, ``organ``, ``bundle``, ``status`` ("ok", "outlier",
"not_judged" with a ``reason``, or "error"), ``outlier`` (True/False/None), ``scores`` {dice, asd_mm, hd95_mm,
max_sd_mm}, ``thresholds``, ``defects``, ``outputs`` (paths), ``timings`` (seconds per step) and ``seconds``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shapeqc.bundles import load_bundle_network, trained_bundle
from shapeqc.defects import defect_components, difference_map
from shapeqc.figures import write_overview, write_stl
from shapeqc.reconstruction import coarse_to_fine_logits, default_margin
from shapeqc.refinement import refined_network
from shapeqc.surface_metrics import shape_scores
from transforms.canonical_grid import CanonicalGrid, grid_to_source
from transforms.errors import EmptyMaskError, SegmentationInputError, TruncatedOrganError
from transforms.grid_transforms import ToCanonicalGridd
from transforms.organ_loading import check_organ_mask, load_organ_mask
from transforms.volume_io import voxel_spacing, write_volume

METRICS = ("dice", "asd_mm", "hd95_mm", "max_sd_mm")
# the direction in which a score is worse: Dice falls, distances grow
WORSE_WHEN = {"dice": "below", "asd_mm": "above", "hd95_mm": "above", "max_sd_mm": "above"}


@dataclass
class Bundle:
    """A trained bundle ready for analysis (loaded once, used for every case)."""

    path: Path
    metadata: dict
    network: torch.nn.Module
    to_grid: ToCanonicalGridd
    thresholds: dict | None
    device: torch.device
    organs: list[str] = field(default_factory=list)
    # test-time refinement steps per organ (0: off; see shapeqc.refinement)
    refine_steps: int = 0
    # label values making up an organ in a dataset's own label map (metadata "organ_labels"), e.g. MSD hippocampus
    organ_labels: dict[str, list[int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def load_thresholds(bundle_dir: str | os.PathLike) -> dict | None:
    path = Path(bundle_dir) / "configs" / "thresholds.json"
    return json.loads(path.read_text()) if path.exists() else None


def _assemble_bundle(bundle_dir: Path, metadata: dict, network: torch.nn.Module, canonical_grid_transforms: list,
                     device: str | torch.device, refine_steps: int) -> Bundle:
    to_grid = next(t for t in canonical_grid_transforms if isinstance(t, ToCanonicalGridd))
    return Bundle(path=bundle_dir, metadata=metadata, network=network.eval(), to_grid=to_grid,
                  thresholds=load_thresholds(bundle_dir), device=torch.device(device),
                  organs=list(metadata.get("organs", [])), refine_steps=int(refine_steps),
                  organ_labels={organ: list(labels) for organ, labels in metadata.get("organ_labels", {}).items()})


def load_bundle(bundle_dir: str | os.PathLike, device: str = "cpu", refine_steps: int = 0) -> Bundle:
    """Load a trained bundle (UntrainedBundleError for an untrained one)."""
    bundle_dir = Path(bundle_dir)
    metadata = trained_bundle(bundle_dir)
    network, parser = load_bundle_network(bundle_dir, device)
    return _assemble_bundle(bundle_dir, metadata, network, parser.get_parsed_content("canonical_grid_transforms"),
                            device, refine_steps)


def bundle_from_config(bundle_root: str | os.PathLike, network: torch.nn.Module, canonical_grid_transforms: list,
                       device: str | torch.device = "cpu", refine_steps: int = 0) -> Bundle:
    """A :class:`Bundle` from a running bundle config's parts (``@network`` with its weights loaded,
    ``@canonical_grid_transforms``): how ``monai.bundle run evaluating`` calibrates the network it evaluated."""
    bundle_root = Path(bundle_root)
    metadata_path = bundle_root / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    return _assemble_bundle(bundle_root.resolve(), metadata, network, canonical_grid_transforms, device,
                            refine_steps)


def select_profile(thresholds: dict | None, spacing_mm) -> dict | None:
    """The calibration profile (``{"spacing_mm", "metrics", ...}``) nearest to an input's spacing.

    Distance: the sum of |log ratio| over the sorted spacings; a profile "as given" (spacing None) stands for
    the calibration data's own spacing, taken as 1 mm isotropic.
    """
    if not thresholds:
        return None
    profiles = thresholds.get("profiles") or [thresholds]
    target = np.sort(np.asarray(spacing_mm, dtype=float))

    def distance(profile):
        reference = np.sort(np.asarray(profile.get("spacing_mm") or (1.0, 1.0, 1.0), dtype=float))
        return float(np.sum(np.abs(np.log(target / reference))))

    return min(profiles, key=distance)


def decide(scores: dict, thresholds: dict | None) -> tuple[bool | None, list[str]]:
    """(outlier?, metrics past their threshold) given a profile ``{"metrics": {m: {threshold, enabled}}}``."""
    if not thresholds:
        return None, []
    past = []
    for metric, rule in thresholds.get("metrics", {}).items():
        if not rule.get("enabled", False):
            continue
        value, limit = scores[metric], rule["threshold"]
        worse = value < limit if WORSE_WHEN[metric] == "below" else value > limit
        if worse:
            past.append(metric)
    return bool(past), past


def reconstruct_in_source(bundle: Bundle, mask: np.ndarray, affine: np.ndarray, organ: str,
                          timings: dict) -> tuple[np.ndarray, CanonicalGrid]:
    """The bundle's reconstruction of ``mask`` (D, H, W) as a bool mask in the same voxel space."""
    start = time.perf_counter()
    item = bundle.to_grid({"mask": mask.astype(np.uint8), "affine": affine, "organ": organ})
    plan = CanonicalGrid.from_dict(item["grid"])
    grid = torch.from_numpy(item["mask"].astype(np.float32))[None].to(bundle.device)
    timings["normalize"] = time.perf_counter() - start
    network = bundle.network
    if bundle.refine_steps:
        start = time.perf_counter()
        network = refined_network(network, grid, bundle.refine_steps)
        timings["refine"] = time.perf_counter() - start
    logits, decoded = coarse_to_fine_logits(network, grid, margin=default_margin(grid.shape[-1]),
                                            timings=timings)
    timings["decoded_points"] = int(decoded)
    start = time.perf_counter()
    occupancy = torch.sigmoid(logits).cpu().numpy()
    restored = grid_to_source(occupancy, plan, binary=True)
    timings["map_back"] = time.perf_counter() - start
    return restored, plan


def score_organ(bundle: Bundle, mask: np.ndarray, affine: np.ndarray, organ: str,
                timings: dict) -> tuple[np.ndarray, dict]:
    """(reconstruction in the input's voxel space, scores {dice, asd_mm, hd95_mm, max_sd_mm} in mm)."""
    reconstruction, _ = reconstruct_in_source(bundle, mask, affine, organ, timings)
    start = time.perf_counter()
    scores = shape_scores(mask, reconstruction, voxel_spacing(affine)).to_dict()
    timings["scores"] = time.perf_counter() - start
    return reconstruction, scores


def error_record(case: str, source: str, organ: str | None, bundle: str, reason: str) -> dict:
    """A record for an input that failed before any organ could be analysed (same fields as analyse_organ's)."""
    return {"case": case, "input": str(source), "organ": organ, "bundle": bundle, "status": "error",
            "reason": reason, "outlier": None, "scores": None, "thresholds": None, "defects": [], "outputs": {},
            "timings": {}, "seconds": 0.0}


def analyse_organ(source: str, organ: str | None, bundle: Bundle, out_dir: str | os.PathLike | None,
                  case: str, map_version: str = "auto", min_defect_ml: float = 0.01) -> dict:
    """Analyse one organ; never raises for bad input: the record says ``error`` or ``not_judged``."""
    started = time.perf_counter()
    timings: dict = {}
    record = {"case": case, "input": str(source), "organ": organ, "bundle": bundle.name, "status": None,
              "reason": None, "outlier": None, "scores": None, "thresholds": None,
              "defects": [], "outputs": {}, "timings": timings, "seconds": None}
    try:
        start = time.perf_counter()
        mask, affine, _ = load_organ_mask(source, organ=organ, map_version=map_version,
                                          labels=bundle.organ_labels.get(organ or ""))
        check_organ_mask(mask, f"{source} [{organ}]" if organ else source)
        timings["load"] = time.perf_counter() - start
        reconstruction, scores = score_organ(bundle, mask, affine, organ or "", timings)
        start = time.perf_counter()
        spacing = voxel_spacing(affine)
        difference = difference_map(mask, reconstruction)
        defects = defect_components(difference, affine, min_defect_ml)
        timings["metrics"] = time.perf_counter() - start
        profile = select_profile(bundle.thresholds, spacing)
        outlier, past = decide(scores, profile)
        record.update(scores=scores, outlier=outlier, thresholds=profile, defects=[d.to_dict() for d in defects],
                      status="not_judged" if outlier is None else "outlier" if outlier else "ok",
                      reason=("uncalibrated: the bundle has no configs/thresholds.json" if outlier is None
                              else ", ".join(f"{m} past threshold" for m in past) or None))
        if out_dir is not None:
            start = time.perf_counter()
            out_dir = Path(out_dir)
            centre = None
            if defects:  # through the largest defect, in voxel indices
                centre = np.linalg.solve(affine[:3, :3], np.asarray(defects[0].centroid_mm) - affine[:3, 3])
            stl = write_stl(reconstruction, affine, out_dir / "reconstruction.stl")
            record["outputs"] = {
                "reconstruction": str(write_volume(out_dir / "reconstruction.nii.gz", reconstruction, affine)),
                "difference": str(write_volume(out_dir / "difference.nii.gz", difference, affine)),
                "stl": str(stl) if stl else None,
                "overview": str(write_overview(mask, reconstruction, affine, centre, out_dir / "overview.png",
                                               f"{case} {organ or ''} {record['status']}")),
            }
            timings["outputs"] = time.perf_counter() - start
    except (EmptyMaskError, TruncatedOrganError) as error:
        record.update(status="not_judged", reason=f"{error.code}: {error.reason}")
    except SegmentationInputError as error:
        record.update(status="error", reason=f"{error.code}: {error}")
    except Exception as error:  # a batch must go on: record anything unexpected with its type
        record.update(status="error", reason=f"{type(error).__name__}: {error}")
    record["timings"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()}
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record
