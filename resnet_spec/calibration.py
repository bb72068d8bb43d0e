"""Calibration images for ``convert --dtype int8`` (framework-free).

``--calibration FILE.npy``: N images, float32, in the spec's input layout (NCHW ``(N, C, H, W)``, what
``parity`` and ``verify`` feed) or channels-last ``(N, H, W, C)``; the header is read and checked
(shape, dtype, size against :data:`MAX_BYTES` and :data:`MAX_IMAGES`) before any data is, with
``allow_pickle=False`` and the data memory-mapped. Without a file: :data:`SYNTHETIC` seeded images of
the standard normal distribution the parity and verify inputs are drawn from, with a note that real
images are needed for real accuracy (activation ranges come from these images).
"""

from __future__ import annotations

import numpy as np

from .errors import ResNetSpecError, first_line
from .fileio import open_regular, shown

#: the most bytes and images a calibration file may hold (1 GiB of float32; 100,000 images)
MAX_BYTES = 1 << 30
MAX_IMAGES = 100_000
#: synthetic calibration set: this many images, this seed (parity's input is seed 0: kept apart)
SYNTHETIC = 32
SYNTHETIC_SEED = 1
SYNTHETIC_NOTE = ("int8 calibrated on {n} synthetic standard-normal images (seed {seed}): activation ranges "
                  "come from them, so real accuracy needs real images (--calibration FILE.npy)")


def synthetic(input_shape, n: int = SYNTHETIC, seed: int = SYNTHETIC_SEED) -> np.ndarray:
    """``n`` NCHW float32 images of the standard normal distribution, seeded."""
    return np.random.default_rng(seed).standard_normal((n, *input_shape), dtype=np.float32)


def _header(path: str, fh):
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(fh)
        shape, fortran, dtype = (npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0)(fh)
    except Exception as exc:  # noqa: BLE001 - not an .npy: ValueError, EOFError, ...
        raise ResNetSpecError(f"--calibration {shown(path)}: not a .npy file ({first_line(exc, 200)})") from None
    return shape, fortran, dtype


def load(path: str, input_shape) -> np.ndarray:
    """The NCHW float32 images of ``path`` (checked as the module says), memory-mapped."""
    with open_regular(path) as fh:  # one open: the header checked is the data mapped
        shape, fortran, dtype = _header(path, fh)
        data = _checked(path, fh, shape, fortran, dtype, input_shape)
    if not np.isfinite(data).all():
        raise ResNetSpecError(f"--calibration {shown(path)}: has NaN or Inf values")
    return data


def _checked(path: str, fh, shape, fortran: bool, dtype, input_shape) -> np.ndarray:
    """The data after the header of the open ``fh``, memory-mapped once its declaration passed."""
    import math

    c, h, w = input_shape
    where = f"--calibration {shown(path)}"
    if dtype.hasobject:
        raise ResNetSpecError(f"{where}: holds Python objects (a pickled array), which are never loaded; "
                              "save a float32 array")
    if dtype != np.float32:
        raise ResNetSpecError(f"{where}: dtype {dtype}, expected float32 images")
    if len(shape) != 4 or tuple(shape[1:]) not in ((c, h, w), (h, w, c)):
        raise ResNetSpecError(f"{where}: shape {tuple(shape)}, expected (N, {c}, {h}, {w}) or (N, {h}, {w}, {c}) "
                              "for this spec")
    if not 1 <= shape[0] <= MAX_IMAGES or 4 * math.prod(shape) > MAX_BYTES:
        raise ResNetSpecError(f"{where}: {shape[0]:,} images ({4 * math.prod(shape):,} bytes); expected 1 to "
                              f"{MAX_IMAGES:,} images and at most {MAX_BYTES:,} bytes")
    try:  # np.memmap maps the open file itself (np.load would open the path again)
        data = np.memmap(fh, dtype=dtype, mode="r", offset=fh.tell(), shape=tuple(shape), order="F" if fortran else "C")
    except (ValueError, OSError) as exc:  # truncated data
        raise ResNetSpecError(f"{where}: cannot be read ({exc})") from None
    return data.transpose(0, 3, 1, 2) if tuple(shape[1:]) != (c, h, w) else data  # channels-last -> NCHW


def images(path: str | None, input_shape) -> tuple[np.ndarray, list]:
    """``(NCHW float32 images, notes)``: the file's, else the synthetic set and its note."""
    if path is not None:
        return load(path, input_shape), []
    return synthetic(input_shape), [SYNTHETIC_NOTE.format(n=SYNTHETIC, seed=SYNTHETIC_SEED)]
