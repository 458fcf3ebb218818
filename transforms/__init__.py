"""MONAI transforms of shapeqc: organ masks in, canonical organ grids out, and the exact way back.

Import flow: shapeqc -> transforms -> cuda_kernels. See README.md ("Grid convention") for axes and units.
"""

from transforms.boundary_samples import BoundarySampled
from transforms.canonical_grid import (
    CanonicalGrid,
    grid_to_source,
    organ_world_bounds,
    plan_canonical_grid,
    source_to_grid,
)
from transforms.class_maps import class_map, detect_map_version, organ_side
from transforms.coordinates import grid_coords_to_voxel, voxel_to_grid_coords, voxel_to_world
from transforms.corruption import (
    RandBoundaryShiftd,
    RandPatchCorruptiond,
    RandPerlinCorruptiond,
    RandPlaneCutd,
    RandSliceDropd,
    organ_box,
)
from transforms.errors import (
    AffineMismatchError,
    EmptyMaskError,
    InvalidAffineError,
    MissingFileError,
    NaNValuesError,
    NonBinaryMaskError,
    NotVolumeError,
    SegmentationInputError,
    TruncatedOrganError,
    UnknownOrganError,
    UnreadableImageError,
)
from transforms.grid_transforms import CanonicalGridToSourced, ToCanonicalGridd
from transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd, check_organ_mask, load_organ_mask
from transforms.packing import PackedMask, PackGridd, UnpackGridd, pack_mask, unpack_mask
from transforms.reslice import RandAcquisitionResliced, acquisition_affine, reslice_mask
from transforms.writers import SaveSourceSpaced

__all__ = [
    "AffineMismatchError",
    "BoundarySampled",
    "RandBoundaryShiftd",
    "RandPatchCorruptiond",
    "RandPlaneCutd",
    "RandSliceDropd",
    "RandPerlinCorruptiond",
    "RandAcquisitionResliced",
    "acquisition_affine",
    "reslice_mask",
    "organ_box",
    "CanonicalGrid",
    "CanonicalGridToSourced",
    "CheckOrganMaskd",
    "EmptyMaskError",
    "InvalidAffineError",
    "LoadOrganMaskd",
    "MissingFileError",
    "NaNValuesError",
    "NonBinaryMaskError",
    "NotVolumeError",
    "PackGridd",
    "PackedMask",
    "SaveSourceSpaced",
    "SegmentationInputError",
    "ToCanonicalGridd",
    "TruncatedOrganError",
    "UnknownOrganError",
    "UnpackGridd",
    "UnreadableImageError",
    "check_organ_mask",
    "class_map",
    "detect_map_version",
    "grid_coords_to_voxel",
    "grid_to_source",
    "load_organ_mask",
    "organ_side",
    "organ_world_bounds",
    "pack_mask",
    "plan_canonical_grid",
    "source_to_grid",
    "unpack_mask",
    "voxel_to_grid_coords",
    "voxel_to_world",
]
