"""Channel independence (CI), the CHIP criterion, as a pure tensor function.

For one image, let A be the layer's feature map as a C x HW matrix. The independence of channel j is
``CI_j = ||A||_* - ||A with row j zeroed||_*`` (nuclear norms). CHIP averages CI over images.

How it is computed, exactly and without one SVD per channel:
with the spectrum of each image, A = U S V^T and lam = S^2 (from the C x C Gram matrix, see _spectrum), the identity
``sqrt(x) = (2/pi) int_0^inf x / (x + t^2) dt`` and Sherman-Morrison give, for every channel at once,

    CI_j = (2/pi) int_0^inf  N_j(t) / D_j(t)  dt,
    N_j(t) = sum_k lam_k u_jk^2 / (lam_k + t^2)^2,
    D_j(t) = sum_k u_jk^2 / (lam_k + t^2) + (1 - sum_k u_jk^2) / t^2,

(the last term is the part of row j outside the range of A, present when C > HW). All terms are
positive, so nothing cancels. Substituting t = s_max * e^s makes the integrand analytic in the strip
|Im s| < pi/2 (its poles sit at t = +-i sqrt(lam)), so the trapezoid rule on a uniform grid in s
converges geometrically: step 0.45 leaves an error near exp(-pi^2 / 0.45) ~ 3e-10, independent of
how spread the spectrum is. The tails beyond the grid are added in closed form.
"""

from __future__ import annotations

import math

import torch

from .errors import ChipPruneError

__all__ = ["channel_independence", "channel_independence_sums"]

# Quadrature grid in s = log(t / s_max): from 1e-12 to 1e6 times the largest singular value.
_S_LO, _S_HI, _STEP = math.log(1e-12), math.log(1e6), 0.45
# Gram eigenvalues below this fraction of the largest are not trusted (see _spectrum).
_GRAM_RELIABLE = 1e-10
# Working memory per chunk of images (bytes); bounds peak memory for large maps.
_CHUNK_BYTES = 256 * 2**20


def _spectrum(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared singular values (descending) and left singular vectors of each (C, M) matrix of ``a``.

    C <= M: eigen-decomposition of the C x C Gram matrix A A^T in float64, several times faster than
    an SVD of A. Squaring the condition number costs accuracy only for eigenvalues below about
    1e-10 of the largest one; images that have such eigenvalues (other than those of all-zero rows,
    whose CI is 0 anyway) are redone with the thin SVD of A. C > M: the thin SVD of A.
    """
    n, c, m = a.shape
    if c > m:
        u, s, _ = torch.linalg.svd(a, full_matrices=False)
        return s.square(), u
    lam, u = torch.linalg.eigh(a @ a.mT)
    lam, u = lam.flip(-1), u.flip(-1)  # descending, like the SVD
    zero_rows = (a == 0).all(-1).sum(-1)  # (n,)
    # The smallest eigenvalue that belongs to non-zero rows must be well above round-off.
    smallest_live = lam.gather(1, (c - 1 - zero_rows).clamp_min(0)[:, None]).squeeze(1)
    suspect = (smallest_live < _GRAM_RELIABLE * lam[:, 0]) & (zero_rows < c)
    if suspect.any():
        u_svd, s_svd, _ = torch.linalg.svd(a[suspect], full_matrices=False)
        lam[suspect], u[suspect] = s_svd.square(), u_svd
    return lam.clamp_min(0.0), u


def _ci_per_image(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CI of every channel of every image, and each image's nuclear norm, for a (n, C, M) float64 batch."""
    n, c, m = a.shape
    lam, u = _spectrum(a)  # lam: (n, r), u: (n, C, r), r = min(C, M)
    s = lam.sqrt()
    nuclear = s.sum(-1)
    smax = s[:, 0].clamp_min(torch.finfo(a.dtype).tiny)

    w = u.square()  # rows sum to 1 when r == C
    outside = (1.0 - w.sum(-1)).clamp_min(0.0) if lam.shape[1] < c else torch.zeros(n, c, dtype=a.dtype, device=a.device)

    grid = torch.arange(_S_LO, _S_HI, _STEP, dtype=a.dtype, device=a.device)
    t = smax[:, None] * grid.exp()[None, :]  # (n, T)
    x = t.square()
    r1 = 1.0 / (lam[:, :, None] + x[:, None, :])  # (n, r, T)
    num = torch.bmm(w, lam[:, :, None] * r1.square())  # (n, C, T)
    den = torch.bmm(w, r1) + outside[:, :, None] / x[:, None, :]
    f = num / den

    # Trapezoid in s (dt = t ds), end points weighted one half.
    g = f * t[:, None, :]
    integral = (g.sum(-1) - 0.5 * (g[:, :, 0] + g[:, :, -1])) * _STEP
    # Euler-Maclaurin end correction: near the ends g(s) ~ e^{+s} (low) and e^{-s} (high).
    integral = integral + (_STEP**2 / 12.0) * (g[:, :, 0] + g[:, :, -1])
    # Below the grid f is ~constant: add t_lo * f(t_lo). Above it f ~ ||row_j||^2 / t^2.
    integral = integral + t[:, :1] * f[:, :, 0]
    row_sq = a.square().sum(-1)
    integral = integral + row_sq / t[:, -1:]
    ci = (2.0 / math.pi) * integral
    # An all-zero channel changes nothing: its CI is exactly 0.
    ci = torch.where(row_sq > 0, ci, torch.zeros_like(ci))
    return ci, nuclear


def channel_independence_sums(feature_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sum over images of CI per channel, sum of nuclear norms, and the image count.

    ``feature_maps`` is (N, C, H, W) or (N, C) (treated as 1x1 maps); any dtype and device.
    Sums let callers stream batches and average at the end. Raises ChipPruneError on NaN/Inf.
    """
    if feature_maps.dim() < 2:
        raise ChipPruneError(f"feature maps must be (N, C, ...), got shape {tuple(feature_maps.shape)}")
    if not torch.isfinite(feature_maps).all():
        raise ChipPruneError("feature maps contain NaN or Inf")
    a_all = feature_maps.detach().reshape(feature_maps.shape[0], feature_maps.shape[1], -1)
    n, c, m = a_all.shape
    r = min(c, m)
    steps = int((_S_HI - _S_LO) / _STEP) + 1
    per_image = 8 * (3 * c * m + 4 * c * steps + 2 * r * steps + c * r)
    chunk = max(1, _CHUNK_BYTES // per_image)
    ci_sum = torch.zeros(c, dtype=torch.float64, device=a_all.device)
    nuc_sum = torch.zeros((), dtype=torch.float64, device=a_all.device)
    for start in range(0, n, chunk):
        a = a_all[start : start + chunk].to(torch.float64)
        ci, nuclear = _ci_per_image(a)
        ci_sum += ci.sum(0)
        nuc_sum += nuclear.sum()
    return ci_sum, nuc_sum, n


def channel_independence(feature_maps: torch.Tensor) -> torch.Tensor:
    """Mean channel independence per channel over images: (N, C, H, W) -> (C,), float64.

    ``CI_j = ||A||_* - ||M_j o A||_*`` for each image's C x HW matrix A, averaged over the N images.
    Exact up to about 1e-10 relative (see the module docstring for the method).
    """
    ci_sum, _, n = channel_independence_sums(feature_maps)
    if n == 0:
        raise ChipPruneError("no feature maps given (N = 0)")
    return ci_sum / n
