"""Noisy linear imputation (Rong et al. 2022): removed pixels from their neighbours.

Every removed value ``v_i`` is the weighted mean of its eight neighbours (weight 1/6
for the four direct neighbours, 1/12 for the diagonal ones; neighbours outside the
image do not count), where removed neighbours enter with their own imputed values::

    sum_j w_ij (v_i - u_j) = 0,   u_j = v_j if pixel j is removed, else x_j.

That is one sparse linear system ``A v = b`` per image, the same matrix for every
channel: ``A_ii = sum_j w_ij`` over the existing neighbours, ``A_ij = -w_ij`` between
removed neighbours, ``b_i = sum_{j kept} w_ij x_j``.  ``A`` is symmetric, and positive
definite whenever the image keeps a pixel (every connected removed region then
touches a kept pixel).  Then Gaussian noise of standard deviation ``noise`` is added
to the imputed values.

Solvers (``solver=``), all in float64:

* ``"scipy"``: the removed pixels of the whole batch, numbered row by row (column by
  column for images taller than wide), form one block-diagonal system, assembled with
  numpy index arithmetic (no loop over pixels).  Its bandwidth is at most the image
  width + 1 (the lower-right neighbour), so it is factored by LAPACK's banded Cholesky
  (``scipy.linalg.solveh_banded``, work ~ unknowns x bandwidth^2) while the bandwidth is
  at most :data:`MAX_BAND`, and by a sparse LU (``scipy.sparse.linalg.spsolve``)
  beyond, where the band grows too wide.  LAPACK runs on one thread
  (``threadpoolctl``, when installed): the band is too narrow for threads to pay, and
  spinning BLAS threads stalled the factorization 10-60x on a busy machine.  Instead
  the batch is split into one group of images per torch thread, whose independent
  systems are solved in parallel threads (the values of one system to rounding: the
  blocks never mix).
* ``"torch"``: Jacobi-preconditioned conjugate gradients on the inputs' device, the
  matrix-vector product a 3x3 convolution, to a relative residual of ``tol``.
* ``"auto"`` (default): ``"scipy"`` for CPU inputs when scipy is installed
  (``pip install 'lrp[evaluate]'``), else ``"torch"``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..batching import Seed, make_generator, randn_like

__all__ = ["noisy_linear_imputation", "SOLVERS", "MAX_BAND"]

SOLVERS = ("auto", "scipy", "torch")
#: Widest band factored by banded Cholesky; wider systems go to the sparse LU.
MAX_BAND = 64
#: Bytes of band storage per group of images solved together.
_BAND_BYTES = 2 ** 28
_DIRECT, _DIAGONAL = 1 / 6, 1 / 12
#: Neighbour offsets ``(rows, columns)`` and their weights.
_OFFSETS = tuple((di, dj, _DIRECT if di == 0 or dj == 0 else _DIAGONAL)
                 for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0))


def noisy_linear_imputation(inputs: Tensor, mask: Tensor, noise: float = 0.01,
                            generator: Seed = None, *, solver: str = "auto", tol: float = 1e-10,
                            max_iter: Union[int, None] = None) -> Tensor:
    """Replace the pixels in ``mask`` by noisy linear imputation (see the module doc).

    Parameters
    ----------
    inputs
        Images ``(batch, C, H, W)``.
    mask
        ``(batch, H, W)`` boolean, True where a pixel is removed.
    noise
        Standard deviation of the Gaussian noise added to the imputed values.
    generator
        Seed or :class:`torch.Generator` for the noise.
    solver
        ``"auto"``, ``"scipy"`` (direct, on the CPU) or ``"torch"`` (conjugate
        gradients on the inputs' device).
    tol, max_iter
        Relative residual at which conjugate gradients stop, and their iteration
        limit (default: the number of pixels); only for ``solver="torch"``.

    Returns
    -------
    Tensor
        The imputed images, ``inputs``' shape, device and dtype.
    """
    if inputs.dim() != 4 or mask.shape != (inputs.shape[0],) + tuple(inputs.shape[2:]):
        raise ValueError(f"noisy linear imputation needs images (batch, C, H, W) and a mask "
                         f"(batch, H, W), got {tuple(inputs.shape)} and {tuple(mask.shape)}")
    if float(noise) < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    removed = mask.to(inputs.device, torch.bool)
    if removed.flatten(1).all(dim=1).any():
        raise ValueError("cannot impute an image with every pixel removed")
    if solver == "auto":
        solver = "scipy" if inputs.device.type == "cpu" and _have_scipy() else "torch"
    x = inputs.detach()
    if solver == "scipy":
        imputed = _scipy_solve(x, removed)
    else:
        imputed = _conjugate_gradients(x, removed, tol, max_iter)
    imputed = imputed.to(device=inputs.device, dtype=inputs.dtype)
    if noise:
        imputed = imputed + float(noise) * randn_like(inputs.shape, make_generator(generator), inputs)
    return torch.where(removed[:, None], imputed, x)


def _have_scipy() -> bool:
    try:
        import scipy.linalg  # noqa: F401
        import scipy.sparse.linalg  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- direct (scipy)
def _scipy_solve(x: Tensor, removed: Tensor) -> Tensor:
    """The imputed images in float64 on the CPU (kept pixels as they are)."""
    transpose = x.shape[2] > x.shape[3]  # number the shorter side fastest: narrower band
    if transpose:
        x, removed = x.transpose(2, 3), removed.transpose(1, 2)
    out = x.cpu().numpy().astype(np.float64)  # a copy, C-contiguous
    mask = removed.cpu().numpy()
    batch, _, height, width = out.shape
    # images per group: the band storage (at most width + 2 rows) stays bounded, and
    # there is a group per torch thread: the groups' systems are independent blocks,
    # solved in parallel (LAPACK releases the GIL)
    group = max(1, min(_BAND_BYTES // ((width + 2) * height * width * 8),
                       math.ceil(batch / max(1, torch.get_num_threads()))))

    def solve(start: int) -> None:
        m = mask[start:start + group]
        if m.any():
            part = out[start:start + group].transpose(0, 2, 3, 1)  # a view (images, H, W, C)
            part[m] = _solve_system(*_assemble(out[start:start + group], m))

    starts = range(0, batch, group)
    with _blas_single_thread():  # once for all groups: the BLAS thread count is process-wide
        if len(starts) > 1 and torch.get_num_threads() > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(min(len(starts), torch.get_num_threads())) as pool:
                list(pool.map(solve, starts))
        else:
            for start in starts:
                solve(start)
    result = torch.from_numpy(out)
    return result.transpose(2, 3) if transpose else result


def _shifted(d: int, size: int) -> Tuple[slice, slice]:
    """Slices ``(here, there)`` pairing position ``i`` with its neighbour ``i + d``."""
    return slice(max(0, -d), size - max(0, d)), slice(max(0, d), size - max(0, -d))


def _assemble(values: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, list, np.ndarray]:
    """The system of the removed pixels of ``values`` ``(batch, C, H, W)``, numbered in
    row-major order over the batch: its diagonal ``(n,)``, the upper off-diagonal
    entries as ``(rows, cols, weight)`` per neighbour offset (row < col), and the
    right-hand side ``(n, C)``."""
    _, _, height, width = values.shape
    variable = (np.cumsum(mask.reshape(-1)) - 1).reshape(mask.shape)  # valid where removed
    weight_sum = np.zeros((height, width))  # of the existing neighbours, by position
    kept = values * ~mask[:, None]
    gathered = np.zeros_like(values)  # sum_j w_ij x_j over kept neighbours j
    upper = []
    for di, dj, w in _OFFSETS:
        (hi, ti), (hj, tj) = _shifted(di, height), _shifted(dj, width)
        weight_sum[hi, hj] += w
        gathered[:, :, hi, hj] += w * kept[:, :, ti, tj]
        if di > 0 or (di == 0 and dj > 0):  # the neighbour comes later: upper triangle
            both = mask[:, hi, hj] & mask[:, ti, tj]
            upper.append((variable[:, hi, hj][both], variable[:, ti, tj][both], -w))
    diagonal = np.broadcast_to(weight_sum, mask.shape)[mask]
    return diagonal, upper, gathered.transpose(0, 2, 3, 1)[mask]


def _blas_single_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _solve_system(diagonal: np.ndarray, upper: list, rhs: np.ndarray) -> np.ndarray:
    """Solve the symmetric system given by its diagonal and upper entries."""
    import scipy.linalg
    import scipy.sparse
    import scipy.sparse.linalg

    n = diagonal.size
    band = max([int((cols - rows).max()) for rows, cols, _ in upper if rows.size] + [0])
    if band <= MAX_BAND:
        ab = np.zeros((band + 1, n))  # LAPACK's upper band storage: ab[band + i - j, j] = a_ij
        ab[band] = diagonal
        for rows, cols, weight in upper:
            ab[band + rows - cols, cols] = weight
        return scipy.linalg.solveh_banded(ab, rhs, check_finite=False)
    rows = np.concatenate([r for r, _, _ in upper])
    cols = np.concatenate([c for _, c, _ in upper])
    weights = np.concatenate([np.full(r.size, w) for r, _, w in upper])
    triangle = scipy.sparse.coo_matrix((weights, (rows, cols)), shape=(n, n))
    a = (triangle + triangle.T + scipy.sparse.diags(diagonal)).tocsc()
    return scipy.sparse.linalg.spsolve(a, rhs).reshape(rhs.shape)


# --------------------------------------------------------------------------- iterative (torch)
def _kernel(dtype, device) -> Tensor:
    d, s = _DIAGONAL, _DIRECT
    return torch.tensor([[d, s, d], [s, 0.0, s], [d, s, d]], dtype=dtype, device=device)[None, None]


def _conjugate_gradients(inputs: Tensor, removed: Tensor, tol: float,
                         max_iter: Union[int, None]) -> Tensor:
    """Jacobi-preconditioned conjugate gradients for all images and channels at once."""
    height, width = inputs.shape[2:]
    x = inputs.double()
    m = removed[:, None].double()
    kernel = _kernel(torch.float64, x.device)

    def neighbours(v: Tensor) -> Tensor:  # sum_j w_ij v_j per channel, zero outside
        flat = v.reshape(-1, 1, height, width)
        return F.conv2d(flat, kernel, padding=1).reshape(v.shape)

    diag = neighbours(torch.ones_like(m)) * m  # sum of the weights of existing neighbours
    b = neighbours(x * (1 - m)) * m

    def apply(v: Tensor) -> Tensor:
        return diag * v - neighbours(v * m) * m

    inv_diag = torch.where(m > 0, 1 / diag.clamp(min=1e-12), torch.zeros_like(diag))
    v = b * inv_diag  # start: each removed pixel from its kept neighbours only
    r = b - apply(v)
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum(dim=(2, 3), keepdim=True)
    b_norm = b.flatten(2).norm(dim=2)[..., None, None].clamp(min=1e-300)
    for _ in range(max_iter or math.prod((height, width))):
        if bool(((r.flatten(2).norm(dim=2)[..., None, None] / b_norm) <= tol).all()):
            break
        ap = apply(p)
        alpha = rz / (p * ap).sum(dim=(2, 3), keepdim=True).clamp(min=1e-300)
        v = v + alpha * p
        r = r - alpha * ap
        z = r * inv_diag
        rz_new = (r * z).sum(dim=(2, 3), keepdim=True)
        p = z + (rz_new / rz.clamp(min=1e-300)) * p
        rz = rz_new
    return v
