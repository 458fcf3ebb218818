"""Improved Perlin noise in 3D (Perlin 2002), equal to the ``noise`` package's ``pnoise3`` elementwise.

The CPU implementation is vectorized numpy in float32 with the exact operation order of ``noise``'s C code
(and of ``perlin.cu``), so results agree to float32 rounding; the ``noise`` package is the test oracle.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np

from shapeqc.cuda_kernels import backend

F = np.float32


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """(permutation (512,) int64, gradients (16, 3) float32) parsed from ``perlin_table.h``."""
    text = backend.KERNEL_DIR.joinpath("perlin_table.h").read_text()

    def numbers(macro: str) -> list[int]:
        block = text.split(f"#define {macro}")[1].split("\n\n")[0]
        return [int(v) for v in re.findall(r"-?\d+", block)]

    permutation = np.array(numbers("SHAPEQC_PERLIN_PERMUTATION") * 2, dtype=np.int64)
    gradients = np.array(numbers("SHAPEQC_PERLIN_GRADIENTS"), dtype=np.float32).reshape(16, 3)
    return permutation, gradients


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * F(6) - F(15)) + F(10))


def _lerp(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + t * (b - a)


def _noise3(x: np.ndarray, y: np.ndarray, z: np.ndarray, repeat: tuple[int, int, int], base: int) -> np.ndarray:
    """One octave; x, y, z float32 arrays of one shape."""
    perm, grad = _tables()

    def p(index):
        return perm[index & 511]

    cells = []
    for coord, rep in zip((x, y, z), repeat, strict=True):
        cell = np.floor(np.fmod(coord, F(rep))).astype(np.int64)
        after = np.fmod((cell + 1).astype(F), F(rep)).astype(np.int64)
        cells.append(((cell & 255) + base, (after & 255) + base))
    (i, ii), (j, jj), (k, kk) = cells
    x = x - np.floor(x)
    y = y - np.floor(y)
    z = z - np.floor(z)
    fx, fy, fz = _fade(x), _fade(y), _fade(z)
    a, b = p(i), p(ii)
    aa, ab, ba, bb = p(a + j), p(a + jj), p(b + j), p(b + jj)
    one = F(1)

    gx_table, gy_table, gz_table = grad[:, 0], grad[:, 1], grad[:, 2]

    def g(hash_, gx, gy, gz):
        h = hash_ & 15
        return gx * gx_table[h] + gy * gy_table[h] + gz * gz_table[h]

    return _lerp(
        fz,
        _lerp(fy, _lerp(fx, g(p(aa + k), x, y, z), g(p(ba + k), x - one, y, z)),
              _lerp(fx, g(p(ab + k), x, y - one, z), g(p(bb + k), x - one, y - one, z))),
        _lerp(fy, _lerp(fx, g(p(aa + kk), x, y, z - one), g(p(ba + kk), x - one, y, z - one)),
              _lerp(fx, g(p(ab + kk), x, y - one, z - one), g(p(bb + kk), x - one, y - one, z - one))),
    )


def perlin3d_cpu(x, y, z, octaves=1, persistence=0.5, lacunarity=2.0, repeatx=1024, repeaty=1024, repeatz=1024,
                 base=0) -> np.ndarray:
    """Vectorized ``pnoise3`` over broadcast float32 arrays; returns float32 of the broadcast shape."""
    if octaves < 1:
        raise ValueError("octaves must be >= 1")
    # no up-front broadcast: on a lattice (x (n, 1, 1), y (1, m, 1), z (1, 1, l)) the per-axis work stays 1D and
    # only the final corner gathers and blends are 3D; each element still sees exactly the same float32 ops
    x, y, z = (np.asarray(v, dtype=F) for v in (x, y, z))
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    if octaves == 1:
        return np.broadcast_to(_noise3(x, y, z, (repeatx, repeaty, repeatz), base), shape)
    freq, amp, top = F(1), F(1), F(0)
    total = np.zeros(shape, dtype=F)
    persistence, lacunarity = F(persistence), F(lacunarity)
    for _ in range(octaves):
        repeat = tuple(int(F(r) * freq) for r in (repeatx, repeaty, repeatz))
        total = total + _noise3(x * freq, y * freq, z * freq, repeat, base) * amp
        top = F(top + amp)
        freq = F(freq * lacunarity)
        amp = F(amp * persistence)
    return total / top


def _perlin3d_cuda(x, y, z, octaves, persistence, lacunarity, repeatx, repeaty, repeatz, base):
    cupy = backend.cupy_module()
    x, y, z = (backend.to_cupy(v) for v in (x, y, z))
    x, y, z = (cupy.ascontiguousarray(v, dtype=cupy.float32) for v in cupy.broadcast_arrays(x, y, z))
    out = cupy.empty_like(x)
    n = x.size
    kernel = backend.raw_module("perlin.cu").get_function("perlin3d_kernel")
    threads = 256
    blocks = min(max(1, (n + threads - 1) // threads), 65535)
    kernel((blocks,), (threads,), (x, y, z, out, np.int64(n), np.int32(octaves), np.float32(persistence),
                                   np.float32(lacunarity), np.int32(repeatx), np.int32(repeaty),
                                   np.int32(repeatz), np.int32(base)))
    return out


def perlin3d(x: Any, y: Any, z: Any, octaves: int = 1, persistence: float = 0.5, lacunarity: float = 2.0,
             repeatx: int = 1024, repeaty: int = 1024, repeatz: int = 1024, base: int = 0) -> Any:
    """Elementwise ``noise.pnoise3(x, y, z, octaves, persistence, lacunarity, repeatx, repeaty, repeatz, base)``.

    Args:
        x, y, z: broadcastable arrays of coordinates (numpy, torch, or CuPy), any shape.
        base: 0 or 1 reproduce ``noise`` exactly; larger values wrap the table (``noise`` reads past it).
    Returns:
        float32 array of the broadcast shape, of the inputs' kind (CUDA inputs run the CUDA kernel).
    """
    if backend.is_device_array(x):
        result = _perlin3d_cuda(x, y, z, octaves, persistence, lacunarity, repeatx, repeaty, repeatz, base)
    else:
        result = perlin3d_cpu(backend.to_numpy(x), backend.to_numpy(y), backend.to_numpy(z), octaves, persistence,
                              lacunarity, repeatx, repeaty, repeatz, base)
    return backend.like(result, x)
