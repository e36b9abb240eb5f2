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

__all__ = ["channel_independence", "channel_independence_per_image", "channel_independence_reference"]

# Quadrature grid in s = log(t / s_max): step, top (1e3 times the largest singular value), and how
# far below the smallest non-zero singular value it starts.
_S_HI, _STEP, _BELOW_SPECTRUM = math.log(1e3), 0.45, 1e-4
# Gram eigenvalues below this fraction of the largest are not trusted (see _spectrum).
_GRAM_RELIABLE = 1e-10
# Working memory per chunk of images (bytes); bounds peak memory for large maps.
_CHUNK_BYTES = 256 * 2**20


def _spectrum(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared singular values (descending), left singular vectors and squared row norms of each
    (C, M) matrix of ``a``.

    C <= M: eigen-decomposition of the C x C Gram matrix A A^T in float64, several times faster than
    an SVD of A. Squaring the condition number costs accuracy only for eigenvalues below about
    1e-10 of the largest one; images that have such eigenvalues (other than those of all-zero rows,
    whose CI is 0 anyway) are redone with the thin SVD of A. C > M: the thin SVD of A.
    """
    n, c, m = a.shape
    if c > m:
        row_sq = a.square().sum(-1)
        _check_finite(row_sq)
        u, s, _ = torch.linalg.svd(a, full_matrices=False)
        return s.square(), u, row_sq
    gram = a @ a.mT
    row_sq = gram.diagonal(dim1=-2, dim2=-1).clone()
    _check_finite(row_sq)
    lam, u = torch.linalg.eigh(gram)
    lam, u = lam.flip(-1), u.flip(-1)  # descending, like the SVD
    zero_rows = (row_sq == 0).sum(-1)  # (n,)
    # The smallest eigenvalue that belongs to non-zero rows must be well above round-off.
    smallest_live = lam.gather(1, (c - 1 - zero_rows).clamp_min(0)[:, None]).squeeze(1)
    suspect = (smallest_live < _GRAM_RELIABLE * lam[:, 0]) & (zero_rows < c)
    # Eigenvalues of all-zero rows are 0 up to round-off: make them exactly 0.
    lam = torch.where(lam < _GRAM_RELIABLE * lam[:, :1], torch.zeros_like(lam), lam)
    if suspect.any():
        u_svd, s_svd, _ = torch.linalg.svd(a[suspect], full_matrices=False)
        lam[suspect], u[suspect] = s_svd.square(), u_svd
    return lam.clamp_min(0.0), u, row_sq


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
    smax = s[:, 0].clamp_min(torch.finfo(a.dtype).tiny)

    w = u.square()  # rows sum to 1 when r == C
    outside = (1.0 - w.sum(-1)).clamp_min(0.0) if lam.shape[1] < c else torch.zeros(n, c, dtype=a.dtype, device=a.device)

    # The grid spans the spectrum: from well below the smallest non-zero eigenvalue of the batch
    # (never below 1e-12 of the largest) to well above the largest.
    positive = torch.where(lam > 0, lam, torch.full_like(lam, float("inf"))).amin(-1) / smax.square()
    low = float(positive.min().clamp(1e-24, 1.0).sqrt()) * _BELOW_SPECTRUM
    grid = torch.arange(math.log(low), _S_HI, _STEP, dtype=a.dtype, device=a.device)
    t = smax[:, None] * grid.exp()[None, :]  # (n, T)
    x = t.square()
    r1 = 1.0 / (lam[:, :, None] + x[:, None, :])  # (n, r, T)
    num = torch.bmm(w, lam[:, :, None] * r1.square())  # (n, C, T)
    den = torch.bmm(w, r1) + outside[:, :, None] / x[:, None, :]
    f = num / den

    # Trapezoid in s (dt = t ds) over the grid, extended to s = -inf and +inf in closed form: beyond
    # the ends the integrand is a sum of exponentials in s, whose trapezoid sums are geometric series
    # (h * g_end * coth(k h / 2) / 2 for a term e^{-k|s|}). The infinite trapezoid sum of an analytic
    # integrand converges geometrically, so this keeps the whole rule exact to ~1e-9.
    g = f * t[:, None, :]
    h = _STEP
    integral = (g.sum(-1) - 0.5 * (g[:, :, 0] + g[:, :, -1])) * h
    # Bottom: f is ~constant below the spectrum, so g ~ e^{s}.
    integral = integral + 0.5 * h / math.tanh(h / 2) * g[:, :, 0]
    # Top: f = G_jj / t^2 + (G_jj^2 - 2 P_j) / t^4 + O(t^-6), with G_jj = ||row_j||^2 and
    # P_j = sum_k lam_k^2 u_jk^2, so g = G_jj / t + (G_jj^2 - 2 P_j) / t^3 + ...
    p2 = torch.bmm(w, lam.square()[:, :, None]).squeeze(-1)
    t_hi = t[:, -1:]
    integral = integral + 0.5 * h / math.tanh(h / 2) * row_sq / t_hi
    integral = integral + 0.5 * h / math.tanh(3 * h / 2) * (row_sq.square() - 2.0 * p2) / t_hi**3
    ci = (2.0 / math.pi) * integral
    # An all-zero channel changes nothing: its CI is exactly 0.
    ci = torch.where(row_sq > 0, ci, torch.zeros_like(ci))
    return ci, nuclear


def channel_independence_per_image(feature_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CI of every channel of every image (N, C) and each image's nuclear norm (N,), float64.

    ``feature_maps`` is (N, C, H, W) or (N, C) (treated as 1x1 maps), any float dtype and device.
    Images are processed in chunks so that the working memory stays under about 256 MiB beyond
    the input. Raises ChipPruneError on NaN or Inf.
    """
    if feature_maps.dim() < 2:
        raise ChipPruneError(f"feature maps must be (N, C, ...), got shape {tuple(feature_maps.shape)}")
    a_all = feature_maps.detach().reshape(feature_maps.shape[0], feature_maps.shape[1], -1)
    n, c, m = a_all.shape
    r = min(c, m)
    steps = int((_S_HI - math.log(1e-12 * _BELOW_SPECTRUM)) / _STEP) + 1
    per_image = 8 * (2 * c * m + 4 * c * steps + 2 * r * steps + 3 * c * r)
    chunk = max(1, _CHUNK_BYTES // per_image)
    cis, nuclears = [], []
    for start in range(0, n, chunk):
        ci, nuclear = _ci_per_image(a_all[start : start + chunk].to(torch.float64))
        cis.append(ci)
        nuclears.append(nuclear)
    if not cis:
        return a_all.new_zeros((0, c), dtype=torch.float64), a_all.new_zeros((0,), dtype=torch.float64)
    return torch.cat(cis), torch.cat(nuclears)


def channel_independence(feature_maps: torch.Tensor) -> torch.Tensor:
    """Mean channel independence per channel over images: (N, C, H, W) -> (C,), float64.

    ``CI_j = ||A||_* - ||M_j o A||_*`` for each image's C x HW matrix A, averaged over the N images.
    Exact to about 1e-8 relative (see the module docstring for the method).
    """
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
