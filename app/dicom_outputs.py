"""DICOM outputs for DICOM inputs: the difference map as a DICOM SEG on the source series, and an encapsulated
PDF summary.

Why PDF rather than a Basic Text SR: OHIF shows encapsulated PDF in its DICOM PDF viewport out of the box and
3D Slicer's DICOM browser lists and opens it, while a Basic Text SR (free text, no TID 1500 measurements) is
shown by neither without extensions; a PDF also carries the overview figure.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from shapeqc.outputs.reports import quality_text
from shapeqc.scoring.quality import coverage_text
from shapeqc.transforms.volume_io import LPS_TO_RAS

# difference map values (shapeqc.scoring.defects): 1 only in the segmentation, 2 only in the reconstruction
DIFFERENCE_SEGMENTS = {1: "suspected over-segmentation", 2: "suspected under-segmentation"}


def read_series(paths: list[str | Path]) -> list:
    """pydicom datasets of one series, sorted along the slice normal."""
    import pydicom

    series = [pydicom.dcmread(str(p)) for p in paths]
    normal = np.cross(*np.reshape(np.asarray(series[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(series, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))


def difference_seg(difference_path: str | Path, source_series: list, organ: str, series_number: int = 901):
    """A DICOM SEG (highdicom) of a difference map NIfTI whose grid is the source series' own (as a DICOM SEG
    input converted by :mod:`dicom_seg_input` has it): one binary segment per non-empty kind. None if the map
    is empty."""
    import highdicom as hd
    import nibabel as nib
    from pydicom.sr.codedict import codes

    image = nib.load(str(difference_path))
    difference = np.asarray(image.dataobj)
    kinds = [value for value in DIFFERENCE_SEGMENTS if (difference == value).any()]
    if not kinds:
        return None
    volume = hd.Volume(np.stack([difference == value for value in kinds], axis=-1).astype(np.uint8),
                       LPS_TO_RAS @ image.affine, coordinate_system="PATIENT",  # its own inverse
                       frame_of_reference_uid=source_series[0].FrameOfReferenceUID,
                       channels={"SegmentNumber": list(range(1, len(kinds) + 1))})
    algorithm = hd.AlgorithmIdentificationSequence(name="shapeqc", version="0.1.0",
                                                   family=codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=index + 1, segment_label=f"{organ}: {DIFFERENCE_SEGMENTS[value]}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for index, value in enumerate(kinds)]
    return hd.seg.Segmentation(
        source_images=source_series, pixel_array=volume, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="shapeqc", manufacturer_model_name="shapeqc",
        software_versions="0.1.0", device_serial_number="0", series_description=f"shapeqc difference {organ}")


def summary_pdf(records: list[dict]) -> bytes:
    """A one-page PDF: each organ's status, scores and predicted Dice, and the overview figure of the first judged
    one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(8.27, 11.69))  # A4
    lines = ["shapeqc shape-prior QC", ""]
    for record in records:
        scores = record.get("scores") or {}
        lines.append(f"{record['organ']}: {record['status']}" + (f" ({record['reason']})" if record.get("reason")
                                                                  else ""))
        if scores:
            lines.append("    " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if v is not None))
        if quality_text(record):
            lines.append(f"    predicted Dice {quality_text(record)} (interval {coverage_text(record['quality'])})")
        for defect in record.get("defects", [])[:3]:
            lines.append(f"    defect: {defect['kind']} {defect['volume_ml'] * 1000:.0f} mm^3 at "
                         f"{', '.join(f'{c:.1f}' for c in defect['centroid_mm'])} mm")
    figure.text(0.05, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=8)
    overview = next((r["outputs"].get("overview") for r in records if r.get("outputs", {}).get("overview")), None)
    if overview:
        axes = figure.add_axes((0.05, 0.05, 0.9, 0.45))
        axes.imshow(plt.imread(overview))
        axes.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="pdf")
    plt.close(figure)
    return buffer.getvalue()


def encapsulated_pdf(pdf: bytes, reference, title: str, series_number: int = 902):
    """An Encapsulated PDF Storage instance in the study of ``reference`` (a pydicom dataset of the input)."""
    from datetime import datetime

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(dataset, key, getattr(reference, key, ""))
    now = datetime.now()
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.ConversionType = "DOC", "WSD"
    dataset.SeriesInstanceUID, dataset.SeriesNumber, dataset.InstanceNumber = generate_uid(), series_number, 1
    dataset.SeriesDescription = dataset.DocumentTitle = title
    dataset.ContentDate, dataset.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    dataset.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    dataset.BurnedInAnnotation = "YES"  # the report names the case
    dataset.Manufacturer = "shapeqc"
    dataset.ConceptNameCodeSequence = []
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    dataset.EncapsulatedDocumentLength = len(pdf)
    return dataset
