"""Bit-packed canonical grids, so a cache holds thousands of 128^3 organs.

A 128^3 mask is 2 MiB as uint8 (8 MiB as float32) but 256 KiB packed. Put :class:`PackGridd` last among
the deterministic transforms of a pipeline and :class:`UnpackGridd` right after it: MONAI's CacheDataset
(and PersistentDataset) then keep the packed form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple


@dataclass(frozen=True)
class PackedMask:
    """A binary volume stored with ``np.packbits``: ``bits`` uint8 (ceil(prod(shape) / 8),), C order."""

    bits: np.ndarray
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)


def pack_mask(mask: np.ndarray) -> PackedMask:
    """Pack any-shaped binary array (nonzero = foreground)."""
    mask = np.asarray(mask)
    return PackedMask(bits=np.packbits(mask.reshape(-1) != 0), shape=tuple(int(s) for s in mask.shape))


def unpack_mask(packed: PackedMask) -> np.ndarray:
    """The uint8 0/1 array of ``packed.shape``."""
    count = int(np.prod(packed.shape))
    return np.unpackbits(packed.bits, count=count).reshape(packed.shape)


class PackGridd(MapTransform):
    """Replace each binary volume under ``keys`` by its :class:`PackedMask`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = pack_mask(d[key])
        return d


class UnpackGridd:
    """Turn each :class:`PackedMask` under ``keys`` back into a uint8 array.

    Deliberately not a ``monai.transforms.Transform``: CacheDataset caches the output of every step up to the
    first random transform *or the first step that is not a MONAI Transform*, so this class marks where
    caching stops and the cache keeps the packed grids. It is picklable and usable in ``Compose`` and in
    bundle configs like any transform.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        self.keys = ensure_tuple(keys)
        self.allow_missing_keys = allow_missing_keys

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} is not in the data")
            if isinstance(d[key], PackedMask):
                d[key] = unpack_mask(d[key])
        return d
