"""Which videos the DALI loader sends to PyAV before DALI sees them (dali_pipelines/routing.py). Pure
Python, so it runs without DALI."""

from dali_pipelines.routing import NvdecCacheGuard, coded_hw, dali_unreadable, nvdec_cache_guard


def test_small_videos_are_routed_around_nvdec():
    assert dali_unreadable("gpu", "vp9", 48, 64) == "64x48 vp9 is below NVDEC's 128x128 minimum"
    assert dali_unreadable("gpu", "vp9", 144, 192) is None
    assert dali_unreadable("gpu", "h264", 48, 64) is None  # H.264 goes down to 48x16
    assert dali_unreadable("gpu", "h264", 8, 64) is not None
    assert dali_unreadable("cpu", "h264", 480, 640) == "codec h264 unreadable by DALI on CPU"
    assert dali_unreadable("cpu", "vp9", 48, 64) is None


def test_codecs_outside_the_decoders_lists_go_to_pyav():
    # Allowlists: an unlisted codec must not reach DALI, fail its batch and cost a pipeline rebuild.
    for codec in ("gif", "mpeg2video", "prores", ""):
        assert "unreadable by DALI on CPU" in dali_unreadable("cpu", codec, 480, 640)
        assert "unreadable by DALI's NVDEC decoder" in dali_unreadable("gpu", codec, 480, 640)
    assert dali_unreadable("cpu", "", 480, 640) == "codec unknown unreadable by DALI on CPU"
    for codec in ("vp8", "mjpeg"):
        assert dali_unreadable("cpu", codec, 480, 640) is None
    for codec in ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"):
        assert dali_unreadable("gpu", codec, 480, 640) is None


def test_coded_size_is_whole_blocks():
    assert coded_hw("h264", 1080, 1920) == (1088, 1920)
    assert coded_hw("h264", 36, 64) == (48, 64)
    assert coded_hw("h264", 48, 64) == (48, 64)
    assert coded_hw("vp9", 36, 64) == (40, 64)
    assert coded_hw("unknown", 1, 1) == (16, 16)


def test_cropped_video_after_an_uncropped_one_of_its_coded_size_goes_to_pyav():
    # The H100 failure: 64x36 H.264 (coded 64x48) decoded after a 64x48 one got the wrong colours.
    guard = NvdecCacheGuard()
    assert guard.check([("h264", 36, 64)]) == [None]  # first: DALI creates a fresh, right decoder
    assert guard.check([("h264", 48, 64), ("h264", 56, 56)]) == [None, None]
    (reason,) = guard.check([("h264", 36, 64)])
    assert "64x36 h264 is coded as 64x48" in reason and "NVDEC decoder cache" in reason
    assert guard.check([("vp9", 36, 64), ("hevc", 36, 64)]) == [None, None]  # other codecs, other keys
    assert guard.check([("h264", 1080, 1920)]) == [None]  # no 1920x1088 video was decoded


def test_an_uncropped_video_in_the_same_batch_counts():
    # DALI decodes a batch's samples concurrently, so the uncropped one may come first.
    reasons = NvdecCacheGuard().check([("h264", 36, 64), ("h264", 48, 64), ("h264", 40, 64)])
    assert reasons[1] is None and reasons[0] is not None and reasons[2] is not None


def test_one_guard_per_gpu_for_the_process():
    assert nvdec_cache_guard(0) is nvdec_cache_guard(0)
    assert nvdec_cache_guard(0) is not nvdec_cache_guard(1)


def test_rotated_videos_go_to_pyav_on_either_decoder():
    # DALI decodes a phone's portrait video as stored, sideways; PyAV turns it upright (VideoInfo.rotation).
    for device in ("cpu", "gpu"):
        reason = dali_unreadable(device, "vp9", 640, 480, rotation=270)
        assert reason == "display rotation of 270 degrees, which DALI ignores (its frames would be sideways)"
        assert dali_unreadable(device, "vp9", 480, 640, rotation=0) is None
