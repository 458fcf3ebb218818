"""Compile a kernel's ``.cu`` source for the host CPU with g++ and a small shim, and load it with ctypes.

This runs the *same* kernel source that CuPy compiles for the GPU, sequentially on the CPU, so tests on a
machine without a GPU can check the kernel code itself against the CPU implementation. ``check_nvcc``
compiles the source to PTX with nvcc (no GPU needed) so a kernel that does not build for CUDA fails.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from shapeqc.cuda_kernels.backend import KERNEL_DIR

GXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-x", "c++")
CUDA_SOURCES = ("perlin.cu", "boundary_sampling.cu", "voxelize.cu")


def _build_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "shapeqc_host_kernels"
    path.mkdir(exist_ok=True)
    return path


@functools.cache
def load_host_kernel(source_name: str) -> ctypes.CDLL:
    """Build (cached by source hash) and load ``cuda_kernels/<source_name>`` as a host shared library."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise RuntimeError("g++ is needed to build kernels for the host")
    kernel_dir = Path(str(KERNEL_DIR))
    source = kernel_dir / source_name
    digest = hashlib.sha256(
        b"".join(p.read_bytes() for p in (source, kernel_dir / "host_shim.h", *kernel_dir.glob("*.h")))
    ).hexdigest()[:16]
    library = _build_dir() / f"{source.stem}_{digest}.so"
    if not library.exists():
        partial = library.with_suffix(".tmp.so")
        subprocess.run([compiler, *GXX_FLAGS, "-include", str(kernel_dir / "host_shim.h"), f"-I{kernel_dir}",
                        str(source), "-o", str(partial)], check=True, capture_output=True, text=True)
        partial.replace(library)
    return ctypes.CDLL(str(library))


def check_nvcc(source_name: str, arch: str = "sm_80") -> str:
    """Compile ``cuda_kernels/<source_name>`` to PTX with nvcc; return the PTX text (raises on errors)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    kernel_dir = Path(str(KERNEL_DIR))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernel.ptx"
        subprocess.run([nvcc, "-ptx", f"-arch={arch}", "--fmad=false", f"-I{kernel_dir}",
                        str(kernel_dir / source_name), "-o", str(out)], check=True, capture_output=True, text=True)
        return out.read_text()
