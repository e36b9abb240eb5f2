import pytest
import torch

from chipprune import ChipPruneError, channel_independence
from chipprune.scoring.independence import channel_independence_reference as direct_channel_independence


@pytest.mark.parametrize(
    "shape",
    [(3, 16, 8, 8), (2, 64, 2, 2), (4, 20, 5, 4), (5, 8, 1, 1), (2, 6, 4, 4), (1, 33, 3, 3)],
)
def test_matches_direct_float64_definition(shape):
    torch.manual_seed(sum(shape))
    maps = torch.relu(torch.randn(shape))
    got = channel_independence(maps)
    ref = direct_channel_independence(maps)
    assert got.dtype == torch.float64 and got.shape == (shape[1],)
    assert (got - ref).abs().max() <= 1e-8 * ref.abs().max()
    assert torch.equal(torch.argsort(got, stable=True), torch.argsort(ref, stable=True))


def test_wide_spectrum_matches_definition():
    torch.manual_seed(1)
    scale = torch.logspace(-6, 3, 32, dtype=torch.float64)[None, :, None, None]
    maps = torch.randn(2, 32, 10, 10, dtype=torch.float64) * scale
    got, ref = channel_independence(maps), direct_channel_independence(maps)
    assert (got - ref).abs().max() <= 1e-8 * ref.abs().max()


def test_duplicated_channel_scores_lower_than_independent_ones():
    torch.manual_seed(2)
    maps = torch.relu(torch.randn(8, 10, 6, 6))
    maps[:, 3] = 0.5 * maps[:, 7]  # channel 3 is a copy of channel 7
    ci = channel_independence(maps)
    others = [j for j in range(10) if j not in (3, 7)]
    assert ci[3] < ci[others].min()
    assert ci[7] < ci[others].min()


def test_all_zero_channel_scores_exactly_zero():
    torch.manual_seed(3)
    maps = torch.relu(torch.randn(4, 12, 5, 5))
    maps[:, 5] = 0
    ci = channel_independence(maps)
    assert ci[5] == 0
    assert (ci[torch.arange(12) != 5] > 0).all()


def test_all_zero_maps_score_zero_without_nan():
    ci = channel_independence(torch.zeros(2, 4, 3, 3))
    assert torch.equal(ci, torch.zeros(4, dtype=torch.float64))


def test_scales_linearly_and_permutes_with_channels():
    torch.manual_seed(4)
    maps = torch.relu(torch.randn(3, 9, 4, 4, dtype=torch.float64))
    perm = torch.randperm(9)
    ci = channel_independence(maps)
    assert torch.allclose(channel_independence(3.0 * maps), 3.0 * ci, rtol=1e-10)
    assert torch.allclose(channel_independence(maps[:, perm]), ci[perm], rtol=1e-10)


def test_more_channels_than_pixels_uses_the_outside_weight():
    # C > HW: each row has a part outside the range of the other rows' span.
    torch.manual_seed(5)
    maps = torch.randn(2, 30, 2, 3)
    got, ref = channel_independence(maps), direct_channel_independence(maps)
    assert (got - ref).abs().max() <= 1e-8 * ref.abs().max()


def test_vector_features_are_one_pixel_maps():
    torch.manual_seed(6)
    v = torch.randn(5, 7)
    assert torch.allclose(channel_independence(v), channel_independence(v[:, :, None, None]))


def test_nan_and_inf_are_refused():
    maps = torch.ones(2, 3, 2, 2)
    maps[0, 1, 0, 0] = float("nan")
    with pytest.raises(ChipPruneError, match="NaN or Inf"):
        channel_independence(maps)


def test_single_channel_scores_its_whole_norm():
    # With one channel, removing it removes the whole matrix: CI = ||A||_* = the row norm.
    torch.manual_seed(7)
    maps = torch.randn(3, 1, 4, 5, dtype=torch.float64)
    expected = maps.reshape(3, -1).norm(dim=1).mean()
    assert torch.allclose(channel_independence(maps), expected[None], rtol=1e-9)


def test_float32_maps_with_a_large_dynamic_range():
    # Channels spanning 1e-4 .. 1e4 in float32: scores are computed in float64 from the float32 values.
    torch.manual_seed(8)
    scale = torch.logspace(-4, 4, 24)[None, :, None, None]
    maps = (torch.relu(torch.randn(3, 24, 6, 6)) * scale).float()
    got, ref = channel_independence(maps), direct_channel_independence(maps)
    assert (got - ref).abs().max() <= 1e-8 * ref.abs().max()
    assert torch.equal(torch.argsort(got, stable=True), torch.argsort(ref, stable=True))


def test_row_almost_inside_the_range_of_the_others():
    # C > HW and one row is a combination of others plus a tiny part outside their span: its
    # integrand bends far below the spectrum, which the quadrature must still follow.
    torch.manual_seed(9)
    maps = torch.randn(2, 12, 2, 4, dtype=torch.float64)
    maps[:, 0] = maps[:, 1] + maps[:, 2] + 1e-5 * torch.randn(2, 2, 4, dtype=torch.float64)
    got, ref = channel_independence(maps), direct_channel_independence(maps)
    assert (got - ref).abs().max() <= 1e-8 * ref.abs().max()


def test_rank_deficient_square_maps_take_the_svd_path():
    # Duplicated channels make the C x C Gram matrix singular; exact zeros must not upset the grid.
    torch.manual_seed(10)
    maps = torch.relu(torch.randn(3, 16, 4, 4, dtype=torch.float64))
    maps[:, 8:] = maps[:, :8] * 2.0
    got, ref = channel_independence(maps), direct_channel_independence(maps)
    assert (got - ref).abs().max() <= 1e-8 * ref.abs().max()


def test_threads_split_images_without_changing_results():
    torch.manual_seed(11)
    maps = torch.relu(torch.randn(9, 10, 5, 5))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = channel_independence(maps)
        torch.set_num_threads(2)
        two = channel_independence(maps)
        assert torch.get_num_threads() == 2  # the thread setting is restored
    finally:
        torch.set_num_threads(previous)
    assert torch.allclose(one, two, rtol=1e-12)


@pytest.mark.parametrize("spread", [1.0, 2.9, 5.0])
def test_more_channels_than_pixels_at_any_conditioning(spread):
    # C > HW goes through the HW x HW Gram matrix (U = A V / s); singular values spread over
    # 10^spread: 2.9 is just inside the eigen path's trust bound, 5.0 takes the SVD fallback.
    torch.manual_seed(12)
    q_left = torch.linalg.qr(torch.randn(2, 80, 20, dtype=torch.float64))[0]
    q_right = torch.linalg.qr(torch.randn(2, 20, 20, dtype=torch.float64))[0]
    maps = ((q_left * torch.logspace(0, -spread, 20, dtype=torch.float64)) @ q_right).reshape(2, 80, 4, 5)
    got, ref = channel_independence(maps), direct_channel_independence(maps)
    assert (got - ref).abs().max() <= 1e-8 * ref.abs().max()


def test_a_dead_pixel_in_a_tall_map_takes_the_svd_path():
    # A pixel that is 0 in every channel makes A^T A singular.
    torch.manual_seed(13)
    maps = torch.relu(torch.randn(3, 40, 3, 3, dtype=torch.float64))
    maps[:, :, 1, 1] = 0
    got, ref = channel_independence(maps), direct_channel_independence(maps)
    assert (got - ref).abs().max() <= 1e-8 * ref.abs().max()
