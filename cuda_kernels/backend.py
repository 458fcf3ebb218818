"""Which implementation runs for a given array, and moving arrays between libraries without copies.

Arrays of the caller's kind go in and come out: numpy arrays and CPU torch tensors run the CPU
implementation; CuPy arrays and CUDA torch tensors run the CUDA kernel (torch <-> CuPy through DLPack, no
copy). CuPy is optional: without it, or without a GPU, everything runs on the CPU path.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import numpy as np

KERNEL_DIR = resources.files("shapeqc.cuda_kernels")
# --fmad=false: no fused multiply-add contraction, so kernel float math rounds like the CPU implementations
NVRTC_OPTIONS = ("--std=c++14", "--fmad=false")


@functools.cache
def cupy_module():
    """The cupy module if it imports and a CUDA device is usable, else None."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # no cupy, no driver, no device: all mean "use the CPU path"
        return None


def gpu_available() -> bool:
    return cupy_module() is not None


def is_torch(array: Any) -> bool:
    return type(array).__module__.startswith("torch")


def is_device_array(array: Any) -> bool:
    """True for CuPy arrays and CUDA torch tensors: inputs that run the CUDA kernels."""
    if is_torch(array):
        return array.is_cuda
    return type(array).__module__.startswith("cupy")


def to_numpy(array: Any) -> np.ndarray:
    """A numpy view (or copy) of a numpy array or CPU torch tensor."""
    if is_torch(array):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def to_cupy(array: Any):
    """A CuPy view of a CuPy array or CUDA torch tensor (DLPack, no copy)."""
    cupy = cupy_module()
    if cupy is None:
        raise RuntimeError("a CUDA array was given but CuPy with a usable GPU is not available")
    if is_torch(array):
        return cupy.from_dlpack(array.detach())
    return array


def like(result: Any, template: Any) -> Any:
    """Return ``result`` (numpy or CuPy) as the kind of ``template`` (numpy, torch CPU/CUDA, CuPy)."""
    if is_torch(template):
        import torch

        if isinstance(result, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(result))
        return torch.from_dlpack(result)
    return result


@functools.cache
def raw_module(source_name: str):
    """The compiled CuPy RawModule of ``cuda_kernels/<source_name>`` (compiled once per process)."""
    cupy = cupy_module()
    source = KERNEL_DIR.joinpath(source_name).read_text()
    include = f"-I{KERNEL_DIR}"
    return cupy.RawModule(code=source, options=(*NVRTC_OPTIONS, include))
