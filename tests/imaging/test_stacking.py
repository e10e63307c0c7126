"""Dark stacking: PHD2's integer mean, min/max-rejected mean, tiled median and median/MAD clip."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from phdserver.imaging import (
    COMBINE_MODES,
    BufferedStacker,
    MeanStacker,
    MinMaxMeanStacker,
    make_stacker,
)


def _stack(mode: str, frames: np.ndarray, **kwargs: int) -> np.ndarray:
    """Feed ``frames`` one at a time to the stacker for ``mode`` and return its result."""
    count, height, width = frames.shape
    buffer = np.empty_like(frames) if mode in ("median", "sigma_clip") else None
    if kwargs:
        assert buffer is not None
        stacker = BufferedStacker(buffer, mode, **kwargs)
    else:
        stacker = make_stacker(mode, (height, width), count, buffer)
    for frame in frames:
        stacker.add(frame)
    assert stacker.count == count
    return stacker.result()


def _half_up(numerator: np.ndarray, denominator: np.ndarray | int) -> np.ndarray:
    """Exact integer round-half-up of numerator / denominator."""
    return ((2 * numerator + denominator) // (2 * denominator)).astype(np.uint16)


def _ref_median(frames: np.ndarray) -> np.ndarray:
    return np.floor(np.median(frames, axis=0) + 0.5).astype(np.uint16)


def _ref_sigma_clip(frames: np.ndarray) -> np.ndarray:
    values = frames.astype(np.int64)
    if len(frames) < 3:
        return _half_up(values.sum(axis=0), len(frames))
    med = np.median(frames, axis=0)
    mad = np.median(np.abs(values - med), axis=0)
    keep = np.abs(values - med) <= 3.0 * (1.482602218505602 * mad)
    return _half_up((values * keep).sum(axis=0), keep.sum(axis=0))


def _ref_minmax(frames: np.ndarray) -> np.ndarray:
    values = frames.astype(np.int64)
    total = values.sum(axis=0)
    if len(frames) < 3:
        return _half_up(total, len(frames))
    return _half_up(total - values.min(axis=0) - values.max(axis=0), len(frames) - 2)


def test_combine_modes_are_named() -> None:
    assert COMBINE_MODES == ("mean", "median", "minmax_mean", "sigma_clip")


# --- mean -------------------------------------------------------------------------------------


def test_mean_truncates_like_phd2() -> None:
    frames = np.array([[[1, 65535]], [[2, 65535]]], np.uint16)
    assert _stack("mean", frames).tolist() == [[1, 65535]]
    frames = np.array([[[1]], [[2]], [[2]]], np.uint16)
    assert _stack("mean", frames).tolist() == [[1]]  # 5 // 3


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=3, max_dims=3, max_side=9)))
def test_mean_is_sum_floordiv_n(frames: np.ndarray) -> None:
    expected = (frames.astype(np.int64).sum(axis=0) // len(frames)).astype(np.uint16)
    result = _stack("mean", frames)
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result, expected)


def test_mean_result_can_be_repeated_and_continued() -> None:
    stacker = MeanStacker((2, 2))
    stacker.add(np.full((2, 2), 10, np.uint16))
    first = stacker.result()
    np.testing.assert_array_equal(first, stacker.result())
    stacker.add(np.full((2, 2), 13, np.uint16))
    np.testing.assert_array_equal(stacker.result(), np.full((2, 2), 11, np.uint16))


def test_mean_memory_stays_at_three_frames() -> None:
    """20 frames of 512×512 fed one at a time: the stacker holds a uint32 sum and the output."""
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 65536, (512, 512), dtype=np.uint16) for _ in range(20)]
    frame_bytes = frames[0].nbytes
    tracemalloc.start()
    try:
        stacker = MeanStacker((512, 512))
        for frame in frames:
            stacker.add(frame)
        result = stacker.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 3.2 * frame_bytes
    expected = sum(f.astype(np.int64) for f in frames) // 20
    np.testing.assert_array_equal(result, expected)


# --- min/max-rejected mean ---------------------------------------------------------------------


def test_minmax_rejects_a_single_cosmic_ray() -> None:
    frames = np.full((5, 3, 3), 100, np.uint16)
    frames[:, 1, 1] = [100, 102, 98, 101, 99]
    frames[2, 0, 0] = 40000  # a cosmic ray in one frame
    result = _stack("minmax_mean", frames)
    assert result[0, 0] == 100
    assert result[1, 1] == 100  # (100 + 101 + 99) / 3
    plain_mean = _stack("mean", frames)
    assert plain_mean[0, 0] > 8000  # the mean keeps it


def test_minmax_rounds_half_up_and_falls_back_below_three() -> None:
    frames = np.array([[[0]], [[1]], [[2]], [[3]]], np.uint16)
    assert _stack("minmax_mean", frames).tolist() == [[2]]  # (1 + 2) / 2 = 1.5
    assert _stack("minmax_mean", frames[:2]).tolist() == [[1]]  # 0.5 rounds up to 1
    assert _stack("minmax_mean", frames[1:3]).tolist() == [[2]]  # 1.5
    assert _stack("minmax_mean", frames[:1]).tolist() == [[0]]


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=3, max_dims=3, max_side=9)))
def test_minmax_matches_numpy(frames: np.ndarray) -> None:
    np.testing.assert_array_equal(_stack("minmax_mean", frames), _ref_minmax(frames))


def test_minmax_result_is_tiled_without_changing_state() -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 65536, (6, 700, 5), dtype=np.uint16)  # > one 256-row tile
    stacker = MinMaxMeanStacker((700, 5))
    for frame in frames:
        stacker.add(frame)
    first = stacker.result()
    np.testing.assert_array_equal(first, _ref_minmax(frames))
    np.testing.assert_array_equal(stacker.result(), first)


# --- median and sigma clip ---------------------------------------------------------------------


def test_median_known_answers() -> None:
    frames = np.array([[[1, 7]], [[2, 7]]], np.uint16)
    assert _stack("median", frames).tolist() == [[2, 7]]  # 1.5 rounds half up
    frames = np.array([[[1]], [[2]], [[3]], [[4]]], np.uint16)
    assert _stack("median", frames).tolist() == [[3]]  # 2.5
    frames = np.array([[[9]], [[65535]], [[1]]], np.uint16)
    assert _stack("median", frames).tolist() == [[9]]


def test_sigma_clip_known_answers() -> None:
    # MAD 0: only the values equal to the median survive.
    frames = np.array([[[5]], [[5]], [[5]], [[6]], [[9]]], np.uint16)
    assert _stack("sigma_clip", frames).tolist() == [[5]]
    # A lone cosmic ray among 5 frames is rejected (a mean/std clip could not, N < 11).
    frames = np.array([[[100]], [[104]], [[96]], [[102]], [[30000]]], np.uint16)
    assert _stack("sigma_clip", frames).tolist() == [[101]]  # (100+104+96+102)/4 = 100.5
    # Fewer than 3 frames: the plain mean, rounded half up.
    frames = np.array([[[1]], [[2]]], np.uint16)
    assert _stack("sigma_clip", frames).tolist() == [[2]]


@pytest.mark.parametrize("count", range(1, 13))
def test_median_network_is_exact_on_every_zero_one_input(count: int) -> None:
    """0-1 principle: a comparator network that gets every 0/1 input right is right for all."""
    patterns = np.array(list(itertools.product((0, 1), repeat=count)), np.uint16).T
    frames = patterns.reshape(count, 1, -1) * np.uint16(1000)
    np.testing.assert_array_equal(_stack("median", frames), _ref_median(frames))
    np.testing.assert_array_equal(_stack("sigma_clip", frames), _ref_sigma_clip(frames))


@pytest.mark.parametrize("count", [13, 16, 17, 20, 25, 31, 32, 33, 50, 64, 100])
def test_median_and_clip_match_numpy_for_larger_stacks(count: int) -> None:
    rng = np.random.default_rng(count)
    for high in (4, 60, 65536):
        frames = rng.integers(0, high, (count, 7, 600), dtype=np.uint16)  # > one 512 chunk
        np.testing.assert_array_equal(_stack("median", frames), _ref_median(frames))
        np.testing.assert_array_equal(_stack("sigma_clip", frames), _ref_sigma_clip(frames))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 30).flatmap(
        lambda n: hnp.arrays(
            np.uint16,
            st.tuples(st.just(n), st.integers(1, 6), st.integers(1, 6)),
            elements=st.one_of(st.integers(0, 20), st.integers(0, 65535)),
        )
    )
)
def test_buffered_modes_match_numpy(frames: np.ndarray) -> None:
    np.testing.assert_array_equal(_stack("median", frames), _ref_median(frames))
    np.testing.assert_array_equal(_stack("sigma_clip", frames), _ref_sigma_clip(frames))


@pytest.mark.parametrize("mode", ["median", "sigma_clip"])
def test_tile_size_does_not_change_the_result(mode: str) -> None:
    rng = np.random.default_rng(7)
    frames = (500 + rng.normal(0, 7, (9, 37, 21))).astype(np.uint16)
    frames[4, 10, 10] = 60000
    results = [_stack(mode, frames, tile_rows=rows) for rows in (1, 3, 16, 37, 64, 1000)]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_inputs_are_never_mutated(mode: str) -> None:
    rng = np.random.default_rng(11)
    frames = rng.integers(0, 65536, (5, 8, 9), dtype=np.uint16)
    copies = frames.copy()
    _stack(mode, frames)
    np.testing.assert_array_equal(frames, copies)


def test_memmap_spool_buffer(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 65536, (7, 50, 60), dtype=np.uint16)
    spool = np.memmap(tmp_path / "spool.u16", dtype=np.uint16, mode="w+", shape=frames.shape)
    stacker = make_stacker("sigma_clip", (50, 60), 7, spool)
    for frame in frames:
        stacker.add(frame)
    np.testing.assert_array_equal(stacker.result(), _ref_sigma_clip(frames))


def test_partial_buffer_combines_frames_added_so_far() -> None:
    frames = np.array([[[1]], [[9]], [[4]]], np.uint16)
    stacker = BufferedStacker(np.zeros((10, 1, 1), np.uint16), "median")
    for frame in frames:
        stacker.add(frame)
    assert stacker.result().tolist() == [[4]]


# --- cancellation ------------------------------------------------------------------------------


def test_cancel_check_runs_before_each_tile() -> None:
    calls = []
    stacker = BufferedStacker(np.zeros((3, 10, 4), np.uint16), "median", tile_rows=4)
    for _ in range(3):
        stacker.add(np.ones((10, 4), np.uint16))
    result = stacker.result(lambda: calls.append(1))
    assert len(calls) == 3  # rows 0-3, 4-7, 8-9
    assert result.tolist() == np.ones((10, 4)).tolist()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["median", "sigma_clip", "minmax_mean"])
def test_cancel_check_exception_propagates(mode: str) -> None:
    calls = []

    def cancel() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise _Stop

    frames = np.zeros((3, 600, 4), np.uint16)
    buffer = np.empty_like(frames) if mode != "minmax_mean" else None
    stacker = make_stacker(mode, (600, 4), 3, buffer)
    for frame in frames:
        stacker.add(frame)
    with pytest.raises(_Stop):
        stacker.result(cancel)
    assert len(calls) == 2


async def test_trio_cancellation_stops_a_median_between_tiles() -> None:
    """The intended use: result() in a worker thread with trio's check_cancelled."""
    stacker = BufferedStacker(np.zeros((3, 40, 3), np.uint16), "median", tile_rows=4)
    for _ in range(3):
        stacker.add(np.ones((40, 3), np.uint16))
    calls = 0
    with trio.CancelScope() as scope:

        def check() -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                trio.from_thread.run_sync(scope.cancel)
            trio.from_thread.check_cancelled()

        await trio.to_thread.run_sync(stacker.result, check)
    assert scope.cancelled_caught
    assert calls == 2


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_wrong_shape_is_rejected_naming_both(mode: str) -> None:
    buffer = np.zeros((2, 4, 5), np.uint16)
    stacker = make_stacker(mode, (4, 5), 2, buffer)
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(4, 5\)"):
        stacker.add(np.zeros((5, 4), np.uint16))
    with pytest.raises(ValueError, match="float32"):
        stacker.add(np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError):
        stacker.add([[0] * 5] * 4)  # type: ignore[arg-type]
    assert stacker.count == 0


@pytest.mark.parametrize("mode", COMBINE_MODES)
def test_capacity_and_empty_result(mode: str) -> None:
    stacker = make_stacker(mode, (2, 2), 1, np.zeros((1, 2, 2), np.uint16))
    with pytest.raises(ValueError, match="no frames"):
        stacker.result()
    stacker.add(np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="full"):
        stacker.add(np.zeros((2, 2), np.uint16))
    assert stacker.count == 1


def test_make_stacker_validation() -> None:
    with pytest.raises(ValueError, match="combine mode"):
        make_stacker("average", (2, 2), 3)
    with pytest.raises(ValueError, match="buffer"):
        make_stacker("median", (2, 2), 3)
    with pytest.raises(ValueError, match=r"\(3, 2, 2\)"):
        make_stacker("sigma_clip", (2, 2), 3, np.zeros((2, 2, 2), np.uint16))
    with pytest.raises(ValueError, match="count"):
        make_stacker("mean", (2, 2), 0)
    with pytest.raises(ValueError, match="shape"):
        make_stacker("mean", (0, 2), 1)
    assert isinstance(make_stacker("mean", (2, 2), 3, np.zeros(1)), MeanStacker)
    assert isinstance(make_stacker("minmax_mean", (2, 2), 3), MinMaxMeanStacker)
    assert isinstance(
        make_stacker("median", (2, 2), 3, np.zeros((3, 2, 2), np.uint16)), BufferedStacker
    )
    with pytest.raises(ValueError, match="mode"):
        BufferedStacker(np.zeros((3, 2, 2), np.uint16), "mean")
    with pytest.raises(ValueError, match="buffer"):
        BufferedStacker(np.zeros((3, 2, 2), np.int16), "median")
