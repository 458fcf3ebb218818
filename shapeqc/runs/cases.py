"""One case: find the cases among the inputs, plan which organs each bundle judges in it, analyse them.

Inputs may be NIfTI or NRRD files, folders searched recursively for them, or trees of per-organ folders
(TotalSegmentator output, the head-and-neck set's ``<rater>/<scan>/segmentations/<Organ>.nrrd``; such a folder
counts as one case). A case is the unit of work (of :mod:`shapeqc.runs.batch`, :mod:`shapeqc.runs.cohort` and the
Deploy app): its file is read once (:class:`VolumeFile`), its organs are planned from that read, and each organ any
bundle covers is analysed:
- a binary mask named after an organ (``liver.nii.gz``, ``Mandible.nrrd``) goes only to the bundles covering it,
  and must hold 0/1 only; any other binary mask is the organ given with ``--organ``, else the organ of the single
  bundle given; with several bundles and no name it is ``not_judged: organ unknown``;
- a label map whose values all belong to one organ's label set (a bundle's ``organ_labels``, e.g. the MSD
  hippocampus labels 1 and 2) is that organ, and only that organ: the other bundles do not read it as a
  TotalSegmentator map (whose labels 1 and 2 are spleen and right kidney);
- a multi-label map or a TotalSegmentator folder is searched for every organ the bundles cover; organs absent from
  it are skipped (a TotalSegmentator map lists far more organs than any case holds), and a case holding none of
  them gets one ``not_judged: organ absent`` record, so no case vanishes.
Any failure of a case at any step (reading, planning, analysis) is an ``error`` record, never an exception.

Case ids are the input's path below its input root (``patientA/seg``), sanitised for the file system and unique
in a run; every output path is checked to lie inside ``--output``. A symlinked folder is followed once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from shapeqc.bundle.datasets import SEGMENTATION_FOLDER
from shapeqc.bundle.loading import Bundle
from shapeqc.judging.analysis import analyse_organ
from shapeqc.outputs.images import image_beside, read_image_file
from shapeqc.outputs.records import Record, error_record
from shapeqc.transforms.class_maps import class_map, organ_of_file_stem
from shapeqc.transforms.errors import NonBinaryMaskError, SegmentationInputError, UnknownOrganError
from shapeqc.transforms.organ_loading import is_label_set_map, organ_file_in
from shapeqc.transforms.volume_io import VolumeFile, is_volume_path, read_volume_file, strip_volume_suffix


def _is_organ_folder(files: list[Path]) -> bool:
    """A folder of per-organ files: at least half of its volume files are named after an organ."""
    return bool(files) and sum(organ_of_file_stem(strip_volume_suffix(p.name)) is not None
                               for p in files) >= max(1, len(files) // 2)

def safe_part(name: str) -> str:
    """One path component safe as a folder name: characters outside letters, digits, ``. _ - +`` become ``_``;
    never empty, ``.`` or ``..``."""
    part = re.sub(r"[^A-Za-z0-9._+-]", "_", name.strip())
    return "_" if part in ("", ".", "..") else part

def case_id_of(parts: list[str]) -> str:
    """A case id from path components: each made safe (:func:`safe_part`), joined with ``/``."""
    return "/".join(safe_part(p) for p in parts) or "_"

def _relative_parts(path: Path, root: Path, strip_suffix: bool) -> list[str]:
    parts = list(path.relative_to(root).parts) if path != root else [path.name]
    if strip_suffix and parts:
        parts[-1] = strip_volume_suffix(parts[-1])
    if len(parts) > 1 and parts[-1] == SEGMENTATION_FOLDER:
        parts = parts[:-1]
    elif parts == [SEGMENTATION_FOLDER]:
        parts = [path.parent.name]
    return parts

def discover_cases(inputs: list[str], notes: list[str] | None = None) -> list[tuple[str, str]]:
    """(case id, path) for every input volume file (NIfTI, NRRD) or per-organ folder, in a stable order.

    A case id is the path below its input folder without the volume suffix (``patientA/seg``,
    ``oncologist/0522c0017``; a per-organ folder without its trailing ``segmentations``), or the file's name for a
    file given directly; ids are made unique (``seg``, ``seg~2``) and safe as folder names. A symlinked folder is
    followed once (resolved folders are remembered). ``notes`` collects what was passed over: empty input folders,
    folders seen twice, files that are not volumes.
    """
    notes = notes if notes is not None else []
    found: list[tuple[list[str], str]] = []
    for entry in inputs:
        root = Path(entry)
        if not root.is_dir():
            found.append(([strip_volume_suffix(root.name)], str(root)))
            continue
        before = len(found)
        visited: set[Path] = set()
        pending = [root]
        skipped = 0
        while pending:
            folder = pending.pop(0)
            resolved = folder.resolve()
            if resolved in visited:
                notes.append(f"{folder}: the same folder as one already searched (a symbolic link), followed once")
                continue
            visited.add(resolved)
            try:
                children = sorted(folder.iterdir())
            except OSError as error:
                notes.append(f"{folder}: cannot be listed ({error.strerror or error})")
                continue
            files = [p for p in children if p.is_file() and is_volume_path(p)]
            skipped += sum(p.is_file() and not is_volume_path(p) for p in children)
            if _is_organ_folder(files):
                found.append((_relative_parts(folder, root, False), str(folder)))
                continue
            pending[:0] = [p for p in children if p.is_dir()]
            found += [(_relative_parts(p, root, True), str(p)) for p in files]
        if len(found) == before:
            notes.append(f"{root}: no NIfTI or NRRD segmentation in this folder")
        if skipped:
            notes.append(f"{root}: {skipped} file(s) that are not NIfTI or NRRD volumes were passed over")
    # the image a segmentation was drawn on (the CT beside it, shapeqc.outputs.images) is shown, not analysed
    images = {str(image): path for _, path in found if (image := image_beside(path)) is not None}
    for _, path in found:
        if path in images:
            notes.append(f"{path}: the image of {images[path]}, shown under its pictures, not analysed")
    found = [(parts, path) for parts, path in found if path not in images]
    cases, used = [], set()
    for parts, path in found:
        case = case_id_of(parts)
        number = 2
        while case in used:
            case, number = f"{case_id_of(parts)}~{number}", number + 1
        used.add(case)
        cases.append((case, path))
    return cases

def known_organ(organ: str, bundles: list[Bundle]) -> str:
    """``organ`` if it is a TotalSegmentator / shapeqc organ name or one of the bundles' organs, else
    UnknownOrganError (an organ name also becomes a folder name)."""
    names = set(class_map("v1").values()) | set(class_map("v2").values())
    names |= {o for bundle in bundles for o in bundle.organs}
    if organ not in names:
        raise UnknownOrganError(None, f"--organ {organ!r} is not an organ name of TotalSegmentator or of the "
                                      "bundles given")
    return organ

def label_set_organs(source: VolumeFile | Path, bundle: Bundle, organ: str | None) -> list[str]:
    """The organs of ``bundle`` whose own label set (``organ_labels``) holds every value of a headerless,
    non-binary label map (a dataset's map of one organ: hippocampus 1 + 2); [] for anything else. A plain 0/1
    mask is no evidence of such a map."""
    if isinstance(source, Path) or source.label_names is not None:
        return []
    values = source.values
    if np.all(np.isin(values, (0, 1))):
        return []
    wanted = [organ] if organ else bundle.organs
    return [o for o in wanted if o in bundle.organ_labels and is_label_set_map(values, bundle.organ_labels[o])]

def organs_for(source: VolumeFile | Path, bundle: Bundle, organ: str | None, single_bundle: bool) -> list:
    """Which organs of ``bundle`` to analyse in one case (see the module doc): ``source`` is the case's file,
    read once, or its per-organ folder."""
    wanted = [organ] if organ else bundle.organs
    if isinstance(source, Path):  # a per-organ folder
        return [o for o in wanted if organ_file_in(source, o) is not None]
    values = source.values
    named = organ_of_file_stem(strip_volume_suffix(source.path.name))
    binary = bool(np.all(np.isin(values, (0, 1))))
    if source.label_names is None:
        in_label_set = label_set_organs(source, bundle, organ)
        if in_label_set:
            return in_label_set
        if named is not None and not binary:
            raise NonBinaryMaskError(source.path, f"named after the organ {named!r}, so a binary mask, but holds "
                                                  f"values {values[:8].tolist()}; a mask must hold 0 and 1 only")
        if binary:
            if organ:
                return [organ] if organ in bundle.organs else []
            if named is not None:  # a file named after an organ goes to the bundles covering it
                return [named] if named in bundle.organs else []
            return [bundle.organs[0]] if single_bundle and bundle.organs else []
        if source.array.dtype.kind == "f" and not np.all(values == np.round(values)):
            raise NonBinaryMaskError(source.path, f"values {values[:8].tolist()} are neither a 0/1 mask nor whole "
                                                  "label numbers")
    if organ:
        return [organ] if organ in bundle.organs else []  # absent from the map: the record says so
    names = source.label_names or class_map(source.map_version)
    present = {names[int(v)] for v in values if int(v) in names}
    return [o for o in wanted if o in present]

def _unplanned_reason(source: VolumeFile | Path, bundles: list[Bundle], organ: str | None) -> str:
    organs = sorted({o for b in bundles for o in b.organs})
    if isinstance(source, Path):
        return f"organ_absent: no file for {', '.join(organs)} in this folder"
    values = source.values
    if np.all(np.isin(values, (0, 1))) and source.label_names is None and organ is None:
        return ("organ_unknown: a binary mask whose file name names no organ, with several bundles; name the file "
                "after its organ (e.g. adrenal_gland_left.nii.gz) or pass --organ")
    shown = [int(v) for v in values if v != 0][:12]
    return (f"organ_absent: none of {', '.join([organ] if organ else organs)} in this label map (labels {shown}); "
            "a mask of one organ must hold 0 and 1 only")

def inside(out_dir: Path, *parts: str) -> Path:
    """``out_dir/parts...``, refused (ValueError) unless it resolves to a place inside ``out_dir``."""
    path = out_dir.joinpath(*parts)
    if not path.resolve().is_relative_to(out_dir.resolve()) or path.resolve() == out_dir.resolve():
        raise ValueError(f"output path {path} would lie outside {out_dir}")
    return path

def case_image(path: str, image: str | None) -> tuple[VolumeFile | None, str | None]:
    """The image of a case, read once: ``image`` when given, else the one beside the segmentation
    (:func:`shapeqc.outputs.images.image_beside`); (None, None) when there is none, (None, warning) when it is
    unreadable."""
    found = Path(image) if image else image_beside(path)
    return read_image_file(found) if found is not None else (None, None)

def analyse_case(case: str, path: str, bundles: list[Bundle], out_dir: str | os.PathLike, organ: str | None = None,
                 map_version: str = "auto", image: str | None = None) -> list[Record]:
    """Every organ any of ``bundles`` covers in one case (the unit of work of :func:`run_batch` and the Deploy
    app): the file is read once, each organ's outputs go to ``out_dir/<case>/<organ>``, with ``image`` (else the
    image found beside the segmentation) under the pictures. Never raises: a case that fails at any step is one
    ``error`` record per bundle."""
    out_dir = Path(out_dir)
    names = ", ".join(b.name for b in bundles)
    try:
        source: VolumeFile | Path = Path(path) if Path(path).is_dir() else read_volume_file(path)
        picture, image_warning = case_image(path, image)
        # a map some bundle claims as its organ's own label set is that dataset's map, for every bundle
        jobs = [(target, bundle) for bundle in bundles for target in label_set_organs(source, bundle, organ)]
        jobs = jobs or [(target, bundle) for bundle in bundles
                        for target in organs_for(source, bundle, organ, single_bundle=len(bundles) == 1)]
        if not jobs:
            records = [error_record(case, path, organ, names, _unplanned_reason(source, bundles, organ),
                                    status="not_judged")]
        else:
            records = [analyse_organ(source, target, bundle, inside(out_dir, case, target or bundle.name), case,
                                     map_version=map_version, image=picture, image_warning=image_warning)
                       for target, bundle in jobs]
    except SegmentationInputError as error:
        records = [error_record(case, path, organ, b.name, f"{error.code}: {error}", digest=b.digest)
                   for b in bundles]
    except MemoryError:
        records = [error_record(case, path, organ, b.name, f"MemoryError: not enough memory to read {path}")
                   for b in bundles]
    except Exception as error:  # a batch must go on: anything unexpected is recorded with its type
        records = [error_record(case, path, organ, b.name, f"{type(error).__name__}: {error}") for b in bundles]
    for record in records:
        record["input"] = str(path)
        record["case_records"] = len(records)
    return records
