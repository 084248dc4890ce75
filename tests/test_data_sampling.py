"""Clip sampling properties (hypothesis) and the data config's validation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipbert.data.config import DataConfig
from clipbert.data.sampling import clip_length, rng_for, sample_frame_indices

videos = st.tuples(
    st.integers(1, 400),  # frame count
    st.sampled_from([1.0, 2.0, 5.0, 10.0, 24.0, 29.97, 30.0]),  # fps
    st.integers(1, 6),  # N
    st.integers(1, 5),  # T
    st.sampled_from([0.5, 1.0, 1.5]),  # clip seconds
)


@settings(max_examples=150, deadline=None)
@given(video=videos, strategy=st.sampled_from(["rand", "uniform", "middle"]), seed=st.integers(0, 2**31))
def test_indices_in_range_ordered_and_span_the_clip(video, strategy, seed):
    num_frames, fps, n, t, seconds = video
    n = 1 if strategy == "middle" else n
    indices = sample_frame_indices(num_frames, fps, n, t, seconds, strategy, np.random.default_rng(seed))
    assert indices.shape == (n, t) and indices.dtype == np.int64
    assert indices.min() >= 0 and indices.max() <= num_frames - 1
    assert (np.diff(indices, axis=1) >= 0).all()  # ordered within a clip
    assert (np.diff(indices[:, 0]) >= 0).all()  # clips in temporal order
    clip_len = clip_length(fps, seconds)
    if num_frames >= clip_len and t >= 2:
        assert (indices[:, -1] - indices[:, 0] == clip_len - 1).all()  # the clip spans its length
    if num_frames < clip_len and t >= 2:  # short video: the clip covers it all and repeats its edge frames
        assert (indices[:, 0] == 0).all() and (indices[:, -1] == num_frames - 1).all()


def test_rand_starts_are_uniform_over_the_valid_range():
    # 40 frames at 10 fps with 1 s clips: starts in 0..30 (31 values). 31,000 draws with a fixed seed; a
    # chi-square above 80 on 30 degrees of freedom has probability < 1e-6 under uniformity.
    rng = np.random.default_rng(1234)
    starts = np.concatenate(
        [sample_frame_indices(40, 10.0, 10, 2, 1.0, "rand", rng)[:, 0] for _ in range(3100)]
    )
    counts = np.bincount(starts, minlength=31)
    assert len(counts) == 31 and counts[0] > 0 and counts[30] > 0
    expected = len(starts) / 31
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 80, chi2


def test_uniform_and_middle_are_deterministic_and_placed():
    idx = sample_frame_indices(100, 10.0, 4, 2, 1.0, "uniform")
    np.testing.assert_array_equal(idx[:, 0], [7, 32, 57, 82])  # centres 12.5, 37.5, ... minus half a clip
    assert (idx[:, 1] - idx[:, 0] == 9).all()
    mid = sample_frame_indices(101, 10.0, 1, 3, 1.0, "middle")
    np.testing.assert_array_equal(mid, [[45, 49, 54]])  # start (101 - 10) // 2; offsets round(0, 4.5, 9)


def test_short_video_repeats_edge_frames():
    idx = sample_frame_indices(3, 10.0, 2, 4, 1.0, "uniform")
    np.testing.assert_array_equal(idx, [[0, 2, 2, 2], [0, 2, 2, 2]])  # offsets 0, 3, 6, 9 clamped to 2


def test_rng_for_is_a_pure_function_of_seed_epoch_index():
    a = sample_frame_indices(300, 30.0, 4, 2, 1.0, "rand", rng_for(7, 3, 11))
    b = sample_frame_indices(300, 30.0, 4, 2, 1.0, "rand", rng_for(7, 3, 11))
    c = sample_frame_indices(300, 30.0, 4, 2, 1.0, "rand", rng_for(7, 4, 11))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="random"), "strategy must be one of rand, uniform, middle"),
        (dict(num_frames=0), "num_frames"),
        (dict(fps=0.0), "fps"),
        (dict(strategy="middle", num_clips=2), "middle"),
        (dict(strategy="rand"), "needs an rng"),
    ],
)
def test_sampling_rejects_bad_inputs(kwargs, message):
    args = dict(num_frames=10, fps=10.0, num_clips=1, frames_per_clip=2, clip_seconds=1.0, strategy="uniform")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sample_frame_indices(**args, rng=None)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"backend": "decord"}, "backend"),
        ({"train_sampling": "dense"}, "train_sampling"),
        ({"image_size": 0}, "image_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"mlm_prob": 1.5}, "mlm_prob"),
        ({"max_text_len": {"msrvtt_rt": 20}}, "max_text_len"),
        ({"backend": "frame_store"}, "frame_store"),
        ({"dali_affine": "yes"}, "dali_affine must be true or false"),
        ({"dali_trim": 1}, "dali_trim must be true or false"),
        ({"nope": 1}, "unknown data config key 'nope'"),
    ],
)
def test_config_rejects_bad_keys_and_values(values, key):
    with pytest.raises(ValueError, match=key):
        DataConfig.from_dict(values)


def test_config_defaults_and_int_text_len():
    cfg = DataConfig.from_dict({"max_text_len": 20, "num_clips": 2})
    assert cfg.max_text_len["didemo_ret"] == 20 and cfg.num_clips == 2
    assert DataConfig().max_text_len["anet_ret"] == 150
