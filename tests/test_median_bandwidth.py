"""The median-heuristic bandwidth is the median Euclidean distance between distinct rows."""

import numpy as np
import pytest

from marsdiff.rewards.kernels import median_heuristic, resolve_bandwidth, squared_distances


def test_even_number_of_pairs_averages_the_two_middle_distances():
    # Points 0, 1, 3, 7 on a line: 6 pairs with distances 1, 3, 7, 2, 6, 4 -> median (3 + 4) / 2.
    # The root of the median squared distance would be sqrt((9 + 16) / 2) = 3.54.
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert median_heuristic(points) == pytest.approx(3.5, abs=1e-12)
    assert median_heuristic(points, sq_distances=squared_distances(points)) == pytest.approx(3.5, abs=1e-12)
    sigma, source = resolve_bandwidth("median", points, scale=0.5)
    assert (sigma, source) == (pytest.approx(1.75, abs=1e-12), "median")


def test_matches_a_direct_median_on_random_rows():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(20, 5))  # 190 pairs: even
    direct = [np.linalg.norm(rows[i] - rows[j]) for i in range(20) for j in range(i + 1, 20)]
    assert len(direct) % 2 == 0
    assert median_heuristic(rows) == pytest.approx(float(np.median(direct)), rel=1e-9)
