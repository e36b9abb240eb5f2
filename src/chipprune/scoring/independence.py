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
converges geometrically (error ~ exp(-pi^2 / step)), independent of how spread the spectrum is.
Only the spectrum needs the full O(C r) sums per node; above it and below it the integrand has
closed forms in a few moments of each row (see _ci_per_image and _below_grid). Step 0.4 gives
about 1e-9 relative error against the definition on random and real maps.

On CPU, the images of a batch are shared among the math library's threads (one eigensolver per
thread), since LAPACK's eigensolver gains little from threads at these sizes.
"""

from __future__ import annotations

import math

import torch

from ..errors import ChipPruneError
from . import placement
from .placement import map_on_cpu_threads

__all__ = ["channel_independence", "channel_independence_per_image", "channel_independence_reference"]

# Quadrature grid in t / s_max: step in log(t / s_max) (trapezoid error ~ exp(-pi^2 / step)),
# top (the closed-form tail beyond it is exact to (1 / _TOP)^6), how far below the smallest
# non-zero singular value it starts, and the lowest start (the integrand is at most 1, so stopping
# there costs at most _FLOOR * s_max).
_STEP, _TOP, _BELOW_SPECTRUM, _FLOOR = 0.4, 16.0, 1e-2, 1e-10
# Gram eigenvalues below this fraction of the largest are not trusted (see _spectrum); for maps with
# more channels than pixels the bound is tighter, since U = A V / s magnifies round-off (_tall_spectrum).
_GRAM_RELIABLE, _TALL_RELIABLE = 1e-10, 1e-6
# Working memory per chunk of images (bytes); bounds peak memory for large maps.
_CHUNK_BYTES = 256 * 2**20


def _spectrum(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared singular values (in no particular order), left singular vectors and squared row norms
    of each (C, M) matrix of ``a``.

    C <= M: eigen-decomposition of the C x C Gram matrix A A^T in float64, several times faster than
    an SVD of A. Squaring the condition number costs accuracy only for eigenvalues below about
    1e-10 of the largest one; images that have such eigenvalues (other than those of all-zero rows,
    whose CI is 0 anyway) are redone with the thin SVD of A. C > M: the M x M Gram matrix (_tall_spectrum).
    The decompositions run where they are fastest (scoring/placement.py).
    """
    n, c, m = a.shape
    if c > m:
        return _tall_spectrum(a)
    gram = a @ a.mT
    row_sq = gram.diagonal(dim1=-2, dim2=-1).clone()
    _check_finite(row_sq)
    lam, u = placement.eigh(gram)  # ascending
    zero_rows = (row_sq == 0).sum(-1)  # (n,)
    # The smallest eigenvalue that belongs to non-zero rows must be well above round-off.
    smallest_live = lam.gather(1, zero_rows.clamp_max(c - 1)[:, None]).squeeze(1)
    suspect = (smallest_live < _GRAM_RELIABLE * lam[:, -1]) & (zero_rows < c)
    # Eigenvalues of all-zero rows are 0 up to round-off: make them exactly 0.
    lam = torch.where(lam < _GRAM_RELIABLE * lam[:, -1:], torch.zeros_like(lam), lam)
    if suspect.any():
        u_svd, s_svd = placement.svd(a[suspect])
        lam[suspect], u[suspect] = s_svd.square(), u_svd
    return lam.clamp_min(0.0), u, row_sq


def _tall_spectrum(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """_spectrum of (C, M) matrices with C > M: the M x M Gram matrix A^T A has the same non-zero
    spectrum and its eigenvectors V give U = A V / s (faster than the thin SVD of A, whose cost grows
    with C: the whole CI of 1024 x 14 x 14 maps 1.54x faster on one CPU core, bench/tall_maps.py).
    Dividing by s magnifies the eigenvectors' round-off by s_max / s, so images whose smallest
    eigenvalue is under _TALL_RELIABLE of the largest (a rank-deficient or
    badly conditioned map) are redone with the thin SVD."""
    row_sq = a.square().sum(-1)
    _check_finite(row_sq)
    lam, v = placement.eigh(a.mT @ a)  # ascending
    lam = lam.clamp_min(0.0)
    u = (a @ v) / lam.sqrt().clamp_min(torch.finfo(a.dtype).tiny)[:, None, :]
    suspect = lam[:, 0] < _TALL_RELIABLE * lam[:, -1]
    if suspect.any():
        u_svd, s_svd = placement.svd(a[suspect])
        lam[suspect], u[suspect] = s_svd.square(), u_svd
    return lam, u, row_sq


def _check_finite(row_sq: torch.Tensor) -> None:
    # A NaN or Inf anywhere in a row makes its squared norm non-finite (float64 cannot overflow here).
    if not torch.isfinite(row_sq).all():
        raise ChipPruneError("feature maps contain NaN or Inf")


def _ci_per_image(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CI of every channel of every image, and each image's nuclear norm, for a (n, C, M) float64 batch."""
    n, c, m = a.shape
    lam, u, row_sq = _spectrum(a)  # lam: (n, r), u: (n, C, r), r = min(C, M); row_sq: (n, C)
    s = lam.sqrt()
    nuclear = s.sum(-1)
    smax = s.amax(-1).clamp_min(torch.finfo(a.dtype).tiny)
    # Singular values under _FLOOR * s_max count as 0 below (each changes a nuclear norm by less).
    lam = torch.where(lam < (_FLOOR * smax[:, None]).square(), torch.zeros_like(lam), lam)

    w = u.square()  # rows sum to 1 when r == C
    outside = (1.0 - w.sum(-1)).clamp_min(0.0) if lam.shape[1] < c else torch.zeros(n, c, dtype=a.dtype, device=a.device)

    # The grid (in units of each image's largest singular value) spans the batch's spectrum: from
    # _BELOW_SPECTRUM under the smallest non-zero singular value, but never under _FLOOR, to _TOP.
    positive = torch.where(lam > 0, lam, torch.full_like(lam, float("inf"))).amin(-1) / smax.square()
    low = max(float(positive.min().clamp(max=1.0).sqrt()) * _BELOW_SPECTRUM, _FLOOR)
    grid = torch.arange(math.log(low), math.log(_TOP) + _STEP, _STEP, dtype=a.dtype, device=a.device)
    t = smax[:, None] * grid.exp()[None, :]  # (n, T)
    x = t.square()
    r1 = 1.0 / (lam[:, :, None] + x[:, None, :])  # (n, r, T)
    # Numerator and denominator sums in one batched product: w @ [lam / (lam + x)^2, 1 / (lam + x)].
    sums = torch.bmm(w, torch.cat([lam[:, :, None] * r1.square(), r1], dim=-1))  # (n, C, 2T)
    steps = grid.shape[0]
    num, den = sums[..., :steps], sums[..., steps:] + outside[:, :, None] / x[:, None, :]
    g = num / den * t[:, None, :]  # the integrand in s (dt = t ds)

    # Trapezoid in s over the grid, extended to s = -inf and +inf in closed form: beyond the ends the
    # integrand is a sum of exponentials in s, whose trapezoid sums are geometric series
    # (h * g_end * coth(k h / 2) / 2 for a term e^{-k|s|}). The infinite trapezoid sum of an analytic
    # integrand converges geometrically, so the whole rule stays exact to ~1e-9.
    h = _STEP
    integral = (g.sum(-1) - 0.5 * (g[:, :, 0] + g[:, :, -1])) * h
    integral = integral + _below_grid(lam / smax[:, None].square(), w, outside, float(grid[0]), smax, g[:, :, 0])
    # Top: with P_k = sum_i lam_i^k u_ji^2 (P_1 = ||row_j||^2), f = P_1 / t^2 + (P_1^2 - 2 P_2) / t^4
    # + (P_1^3 - 3 P_1 P_2 + 3 P_3) / t^6 + O((s_max / t)^8), and g = f t.
    p = torch.bmm(w, torch.stack([lam.square(), lam.pow(3)], dim=-1))  # (n, C, 2)
    p1, p2, p3 = row_sq, p[..., 0], p[..., 1]
    t_hi = t[:, -1:]
    for k, coeff in ((1, p1), (3, p1.square() - 2.0 * p2), (5, p1.pow(3) - 3.0 * p1 * p2 + 3.0 * p3)):
        integral = integral + 0.5 * h / math.tanh(k * h / 2) * coeff / t_hi**k
    ci = (2.0 / math.pi) * integral
    # An all-zero channel changes nothing: its CI is exactly 0.
    ci = torch.where(row_sq > 0, ci, torch.zeros_like(ci))
    return ci, nuclear


def _below_grid(
    lam_n: torch.Tensor, w: torch.Tensor, outside: torch.Tensor, s_lo: float, smax: torch.Tensor, g_lo: torch.Tensor
) -> torch.Tensor:
    """Trapezoid sum of the integrand below the grid's first node s_lo (whose half weight is included).

    There x <= (_BELOW_SPECTRUM)^2 lam_min, so with Q_m = sum_{lam_k > 0} u_jk^2 / lam_k^m and o_j
    the weight of row j outside the non-zero spectrum, f = x (Q_1 - 2 x Q_2) / (o + x Q_1 - x^2 Q_2)
    up to O((x / lam_min)^2): O(C) work per node instead of O(C r). When o_j > 0, f still changes
    below the spectrum (around x = o_j / Q_1), so these nodes go on down to _FLOOR. Beyond that the
    integrand, which lies in [0, 1], is taken as ~ e^{s}: at most _FLOOR * s_max is misplaced.
    """
    h = _STEP
    depth = int((s_lo - math.log(_FLOOR)) / h)
    if depth == 0:
        return 0.5 * h / math.tanh(h / 2) * g_lo
    live = lam_n > 0
    inv = torch.where(live, 1.0 / torch.where(live, lam_n, torch.ones_like(lam_n)), torch.zeros_like(lam_n))
    q = torch.bmm(w, torch.stack([inv, inv.square()], dim=-1))  # (n, C, 2), in units of s_max
    q1, q2 = q[..., :1], q[..., 1:]
    # Exactly 0 for a row inside the range of A (1 - sum w would leave round-off, which would bend f
    # spuriously at x ~ 1e-16 / Q_1).
    o = outside[..., None] + (w * ~live[:, None, :]).sum(-1, keepdim=True)
    t_n = torch.exp(s_lo - h * torch.arange(1, depth + 1, dtype=w.dtype, device=w.device))  # t / s_max
    x = t_n.square()
    g = x * (q1 - 2.0 * x * q2) / (o + x * q1 - x.square() * q2) * t_n * smax[:, None, None]  # (n, C, depth)
    # The grid's first node gets its other half weight; the last node here is closed like g ~ e^{s}.
    return h * (0.5 * g_lo + g.sum(-1) + g[..., -1] / math.expm1(h))


def channel_independence_per_image(feature_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CI of every channel of every image (N, C) and each image's nuclear norm (N,), float64.

    ``feature_maps`` is (N, C, H, W) or (N, C) (treated as 1x1 maps), any float dtype and device.
    Images are processed in chunks so that the working memory stays under about 256 MiB beyond
    the input. Raises ChipPruneError on NaN or Inf.
    """
    _check_input(feature_maps)
    a_all = feature_maps.detach().reshape(feature_maps.shape[0], feature_maps.shape[1], -1)
    n, c, m = a_all.shape
    r = min(c, m)
    steps = int((math.log(_TOP) - math.log(_FLOOR)) / _STEP) + 2
    per_image = 8 * (2 * c * m + 5 * c * steps + 4 * r * steps + 3 * c * r)
    chunk = max(1, _CHUNK_BYTES // per_image)
    if n == 0:
        return a_all.new_zeros((0, c), dtype=torch.float64), a_all.new_zeros((0,), dtype=torch.float64)
    pieces = [a_all[start : start + chunk] for start in range(0, n, chunk)]
    workers = min(torch.get_num_threads(), n) if a_all.device.type == "cpu" else 1
    if workers > 1:
        # Each chunk is shared among the workers, so the memory bound holds for all of them together.
        pieces = [part for piece in pieces for part in piece.chunk(workers)]
        results = map_on_cpu_threads(_ci_rescaled, pieces, workers)
    else:
        results = [_ci_rescaled(piece) for piece in pieces]
    return torch.cat([ci for ci, _ in results]), torch.cat([nuclear for _, nuclear in results])


def _check_input(feature_maps: torch.Tensor) -> None:
    if not isinstance(feature_maps, torch.Tensor):
        raise ChipPruneError(f"feature maps must be a torch.Tensor, got {type(feature_maps).__name__}")
    if feature_maps.dim() < 2 or feature_maps.shape[1] == 0 or any(d == 0 for d in feature_maps.shape[2:]):
        raise ChipPruneError(f"feature maps must be (N, C, ...) with C and every spatial size above 0, got shape {tuple(feature_maps.shape)}")
    if feature_maps.is_meta:
        raise ChipPruneError("feature maps are on the meta device (shapes without values): run the model on real data")
    if not feature_maps.is_floating_point():
        raise ChipPruneError(f"feature maps must be floating point, got {feature_maps.dtype}")


def _ci_rescaled(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_ci_per_image on each image divided by its largest magnitude, scaled back: CI is positively
    homogeneous (CI(sA) = s CI(A)), and the Gram matrix of maps near 1e160 would overflow, near 1e-160
    underflow to zero."""
    a = part.to(torch.float64)
    scale = a.abs().amax(dim=(1, 2))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero maps (CI 0) and NaN (refused later)
    ci, nuclear = _ci_per_image(a / scale[:, None, None])
    return ci * scale[:, None], nuclear * scale


def channel_independence(feature_maps: torch.Tensor) -> torch.Tensor:
    """Mean channel independence per channel over images: (N, C, H, W) -> (C,), float64.

    ``CI_j = ||A||_* - ||M_j o A||_*`` for each image's C x HW matrix A, averaged over the N images.
    Exact to about 1e-8 relative (see the module docstring for the method).
    """
    _check_input(feature_maps)
    if feature_maps.shape[0] == 0:
        raise ChipPruneError("no feature maps given (N = 0)")
    ci, _ = channel_independence_per_image(feature_maps)
    return ci.mean(0)


def channel_independence_reference(feature_maps: torch.Tensor) -> torch.Tensor:
    """The definition evaluated literally in float64: one SVD per (image, channel). Slow; for checking."""
    a = feature_maps.detach().reshape(feature_maps.shape[0], feature_maps.shape[1], -1).double()
    out = torch.zeros(a.shape[1], dtype=torch.float64)
    for img in a:
        full = torch.linalg.svdvals(img).sum()
        for j in range(img.shape[0]):
            masked = img.clone()
            masked[j] = 0
            out[j] += full - torch.linalg.svdvals(masked).sum()
    return out / a.shape[0]
