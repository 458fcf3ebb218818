"""MONAI transforms of shapeqc: organ masks in, canonical organ grids out, and the exact way back.

Installed as ``shapeqc.transforms`` (folder ``transforms/``). Import flow: shapeqc -> shapeqc.transforms ->
shapeqc.cuda_kernels. See README.md ("Grid convention") for axes and units.
"""

from shapeqc.transforms.annotation_style import (
    RandOutlineRestyled,
    RandSinusCarved,
    convex_hull_mask,
    signed_distance,
)
from shapeqc.transforms.boundary_samples import BoundarySampled
from shapeqc.transforms.canonical_grid import (
    CanonicalGrid,
    grid_to_source,
    organ_world_bounds,
    plan_canonical_grid,
    source_to_grid,
)
from shapeqc.transforms.class_maps import class_map, detect_map_version, organ_side
from shapeqc.transforms.coordinates import grid_coords_to_voxel, voxel_to_grid_coords, voxel_to_world
from shapeqc.transforms.corruption import (
    RandBoundaryShiftd,
    RandPatchCorruptiond,
    RandPerlinCorruptiond,
    RandPlaneCutd,
    RandSliceDropd,
    organ_box,
)
from shapeqc.transforms.errors import (
    AffineMismatchError,
    EmptyMaskError,
    InvalidAffineError,
    MissingFileError,
    NaNValuesError,
    NonBinaryMaskError,
    NotVolumeError,
    OrganAbsentError,
    SegmentationInputError,
    TruncatedOrganError,
    UnknownOrganError,
    UnreadableImageError,
    UnsplitSidesError,
)
from shapeqc.transforms.grid_transforms import CanonicalGridToSourced, ToCanonicalGridd
from shapeqc.transforms.organ_loading import CheckOrganMaskd, LoadOrganMaskd, check_organ_mask, load_organ_mask
from shapeqc.transforms.packing import PackedMask, PackGridd, UnpackGridd, pack_mask, unpack_mask
from shapeqc.transforms.reslice import RandAcquisitionResliced, acquisition_affine, reslice_mask
from shapeqc.transforms.writers import SaveSourceSpaced

__all__ = [
    "AffineMismatchError",
    "BoundarySampled",
    "RandBoundaryShiftd",
    "RandPatchCorruptiond",
    "RandPlaneCutd",
    "RandSliceDropd",
    "RandOutlineRestyled",
    "RandSinusCarved",
    "convex_hull_mask",
    "signed_distance",
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
    "OrganAbsentError",
    "PackGridd",
    "PackedMask",
    "SaveSourceSpaced",
    "SegmentationInputError",
    "ToCanonicalGridd",
    "TruncatedOrganError",
    "UnknownOrganError",
    "UnpackGridd",
    "UnreadableImageError",
    "UnsplitSidesError",
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
