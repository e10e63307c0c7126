"""PHD2's defect map: statistics, thresholds, selection order, ties, and defect removal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from phdserver.imaging import (
    aggressiveness_to_sigma,
    build_defect_map,
    image_stats,
    phd2_median_filter,
    remove_defects,
    upper_median,
)


def _plain_stats(image: np.ndarray) -> tuple[float, float, int, int]:
    values = sorted(int(v) for v in image.ravel())
    n = len(values)
    mean = math.fsum(values) / n
    stdev = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    median = values[n // 2]
    mad = sorted(abs(v - median) for v in values)[n // 2]
    return mean, stdev, median, mad


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12)))
def test_image_stats_match_plain_definitions(image: np.ndarray) -> None:
    stats = image_stats(image)
    mean, stdev, median, mad = _plain_stats(image)
    assert stats.mean == pytest.approx(mean, rel=1e-12)
    assert stats.stdev == pytest.approx(stdev, rel=1e-9, abs=1e-9)
    assert (stats.median, stats.mad) == (median, mad)
    assert upper_median(image) == median


def test_image_stats_upper_median_and_raw_mad() -> None:
    image = np.array([[1, 2, 3, 10]], np.uint16)
    stats = image_stats(image)
    assert stats.median == 3  # rank 4 // 2 = 2 of [1, 2, 3, 10]
    assert stats.mad == 2  # |x - 3| sorted: [0, 1, 2, 7], rank 2; no 1.4826 factor


def test_aggressiveness_to_sigma() -> None:
    assert aggressiveness_to_sigma(0) == 8.0
    assert aggressiveness_to_sigma(50) == pytest.approx(1.0)
    assert aggressiveness_to_sigma(75) == pytest.approx(2**-1.5)
    assert aggressiveness_to_sigma(100) == pytest.approx(0.125)
    assert aggressiveness_to_sigma(-20) == 8.0
    assert aggressiveness_to_sigma(250) == aggressiveness_to_sigma(100)


def _phd2_by_loop(
    master: np.ndarray, filtered: np.ndarray, hot_aggr: float, cold_aggr: float
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """PHD2's selection written pixel by pixel, keeping every tie (our documented fix)."""
    _, stdev, _, _ = _plain_stats(master)
    candidate = int(0.125 * stdev)
    hot: list[tuple[int, int, int]] = []
    cold: list[tuple[int, int, int]] = []
    height, width = master.shape
    for y in range(height):
        for x in range(width):
            v = int(master[y, x]) - int(filtered[y, x])
            if v > candidate:
                hot.append((v, x, y))
            elif -v > candidate:
                cold.append((-v, x, y))
    hot_t = int(2 ** (3 - 0.06 * hot_aggr) * stdev)
    cold_t = int(2 ** (3 - 0.06 * cold_aggr) * stdev)
    # sorted() is stable: ties stay in scan (row-major) order.
    hot_sel = sorted((p for p in hot if p[0] >= hot_t), key=lambda p: p[0])
    cold_sel = sorted((p for p in cold if p[0] >= cold_t), key=lambda p: p[0])
    return [(x, y) for _, x, y in cold_sel], [(x, y) for _, x, y in hot_sel]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("hot_aggr", "cold_aggr"), [(75, 75), (100, 0), (0, 100), (50, 90)])
def test_selection_equals_a_plain_loop(seed: int, hot_aggr: int, cold_aggr: int) -> None:
    rng = np.random.default_rng(seed)
    master = (500 + rng.normal(0, 6, (24, 31))).astype(np.uint16)
    master[rng.random(master.shape) < 0.03] = rng.integers(600, 5000)
    master[rng.random(master.shape) < 0.02] = 420
    filtered = phd2_median_filter(master, 5)
    result = build_defect_map(master, filtered, hot_aggr, cold_aggr)
    cold, hot = _phd2_by_loop(master, filtered, hot_aggr, cold_aggr)
    assert result.cold.tolist() == [list(p) for p in cold]
    assert result.hot.tolist() == [list(p) for p in hot]
    assert result.pixels.tolist() == [list(p) for p in cold + hot]


def test_all_pixels_sharing_a_deviation_are_kept() -> None:
    """PHD2 would keep one pixel per deviation value; we keep them all, in scan order."""
    master = np.full((10, 10), 100, np.uint16)
    filtered = np.full((10, 10), 100, np.uint16)
    for x, y in [(3, 7), (1, 1), (5, 2)]:
        master[y, x] = 150
    for x, y in [(9, 9), (0, 0)]:
        master[y, x] = 50
    master[4, 4] = 180
    result = build_defect_map(master, filtered, 100, 100)
    assert result.hot.tolist() == [[1, 1], [5, 2], [3, 7], [4, 4]]
    assert result.cold.tolist() == [[0, 0], [9, 9]]
    assert result.pixels.tolist() == [[0, 0], [9, 9], [1, 1], [5, 2], [3, 7], [4, 4]]


@pytest.mark.parametrize("aggr", [0, 50, 75, 100])
def test_thresholds_and_deltas(aggr: int) -> None:
    rng = np.random.default_rng(aggr)
    master = (1000 + rng.normal(0, 40, (50, 60))).astype(np.uint16)
    filtered = phd2_median_filter(master)
    result = build_defect_map(master, filtered, hot_aggressiveness=aggr, cold_aggressiveness=aggr)
    stdev = result.stats.stdev
    sigma = 2 ** (3 - 0.06 * aggr)
    assert result.hot_sigma == pytest.approx(sigma)
    assert result.cold_sigma == pytest.approx(sigma)
    assert result.hot_threshold == int(sigma * stdev)
    assert result.cold_threshold == int(sigma * stdev)
    assert result.candidate_threshold == int(0.125 * stdev)
    assert result.delta_hot == result.hot_threshold
    assert result.delta_cold == -result.cold_threshold
    assert result.hot_aggressiveness == aggr
    deviation = master.astype(int) - filtered.astype(int)
    minimum = max(result.candidate_threshold + 1, result.hot_threshold)
    assert len(result.hot) == int((deviation >= minimum).sum())
    for x, y in result.hot:
        assert deviation[y, x] >= minimum
    hot_devs = [deviation[y, x] for x, y in result.hot]
    assert hot_devs == sorted(hot_devs)


def test_planted_defects_are_found() -> None:
    rng = np.random.default_rng(42)
    shape = (200, 300)
    master = (500 + rng.normal(0, 7, shape)).astype(np.uint16)
    positions = rng.choice(shape[0] * shape[1], 40, replace=False)
    hot_idx, cold_idx = positions[:25], positions[25:]
    master.flat[hot_idx] = rng.integers(2000, 5000, hot_idx.size)
    master.flat[cold_idx] = 300
    planted_hot = {(int(i % shape[1]), int(i // shape[1])) for i in hot_idx}
    planted_cold = {(int(i % shape[1]), int(i // shape[1])) for i in cold_idx}
    filtered = phd2_median_filter(master)

    default = build_defect_map(master, filtered)
    assert planted_hot <= {tuple(p) for p in default.hot.tolist()}
    assert planted_cold <= {tuple(p) for p in default.cold.tolist()}

    strict = build_defect_map(master, filtered, hot_aggressiveness=0, cold_aggressiveness=0)
    assert {tuple(p) for p in strict.hot.tolist()} == planted_hot
    assert strict.cold.shape == (0, 2)


def test_reselection_is_monotonic_in_aggressiveness() -> None:
    rng = np.random.default_rng(9)
    master = (500 + rng.normal(0, 7, (60, 80))).astype(np.uint16)
    filtered = phd2_median_filter(master)
    previous: set[tuple[int, int]] = set()
    for aggr in (0, 25, 50, 75, 100):
        found = {tuple(p) for p in build_defect_map(master, filtered, aggr, aggr).pixels.tolist()}
        assert previous <= found
        previous = found


def test_build_defect_map_validates() -> None:
    master = np.zeros((4, 5), np.uint16)
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(4, 5\)"):
        build_defect_map(master, np.zeros((5, 4), np.uint16))
    with pytest.raises(ValueError, match="uint16"):
        build_defect_map(master.astype(np.int32), master)


def test_inputs_not_mutated() -> None:
    rng = np.random.default_rng(1)
    master = rng.integers(0, 65536, (20, 20), dtype=np.uint16)
    filtered = phd2_median_filter(master, 3)
    m, f = master.copy(), filtered.copy()
    build_defect_map(master, filtered)
    np.testing.assert_array_equal(master, m)
    np.testing.assert_array_equal(filtered, f)


# --- remove_defects ----------------------------------------------------------------------------

GRID = np.array(
    [[10, 20, 30, 40], [50, 60, 71, 80], [90, 100, 110, 120], [130, 140, 150, 160]], np.uint16
)


def test_remove_defects_corner_edge_inside() -> None:
    out = remove_defects(GRID, [(0, 0)])
    assert out[0, 0] == 50  # neighbours 20, 50, 60
    out = remove_defects(GRID, [(0, 1)])
    assert out[1, 0] == 60  # 10, 20, 60, 90, 100
    out = remove_defects(GRID, [(1, 1)])
    assert out[1, 1] == 60  # 10 20 30 50 71 90 100 110 -> floor((50 + 71) / 2)
    out = remove_defects(GRID, [(3, 3)])
    assert out[3, 3] == 120  # 110, 120, 150
    assert (remove_defects(GRID, [(3, 3)]) != GRID).sum() == 1


def test_remove_defects_is_sequential() -> None:
    grid = GRID.copy()
    grid[1, 1] = 5000  # a hot pixel next to another defect
    # Alone, (2, 1) sees the hot value: 20 30 40 80 100 110 120 5000 -> (80 + 100) // 2.
    assert remove_defects(grid, [(2, 1)])[1, 2] == 90
    # Listed after (1, 1), it sees (1, 1) already corrected to 60 (10 20 30 50 71 90 100 110):
    # 20 30 40 60 80 100 110 120 -> (60 + 80) // 2.
    out = remove_defects(grid, [(1, 1), (2, 1)])
    assert out[1, 1] == 60
    assert out[1, 2] == 70
    # The other order differs: (1, 1) then sees the corrected (2, 1).
    out = remove_defects(grid, [(2, 1), (1, 1)])
    assert out[1, 2] == 90
    assert out[1, 1] == 70  # 10 20 30 50 90 90 100 110 -> (50 + 90) // 2


def test_remove_defects_skips_outside_and_copies() -> None:
    grid = GRID.copy()
    out = remove_defects(grid, [(-1, 0), (4, 0), (0, 4), (10, -3)])
    np.testing.assert_array_equal(out, GRID)
    out[0, 0] = 1
    np.testing.assert_array_equal(grid, GRID)  # a copy, input untouched
    np.testing.assert_array_equal(remove_defects(GRID, np.zeros((0, 2), int)), GRID)
    np.testing.assert_array_equal(remove_defects(np.ones((1, 1), np.uint16), [(0, 0)]), [[1]])
    thin = np.array([[5, 9, 1, 7]], np.uint16)
    assert remove_defects(thin, [(1, 0)])[0, 1] == 3  # neighbours 5, 1 -> (1 + 5) // 2
