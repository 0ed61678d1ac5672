"""The decode engine against the golden fixtures and the independent PyTorch reference."""
import time
import numpy as np
import pytest

import wanvideo_vae as wv
from helpers import (load_fixture, random_latents, random_stats, random_weights, to_unit,
                     write_safetensors)
from wanvideo_vae.media import to_uint8

FIXTURE_TOL = 1e-4   # DESIGN.md: fp32 CPU path vs the public implementation
REFERENCE_TOL = 1e-4


def reference_decode(*args, **kwargs):
    """tests/reference_decoder.py's PyTorch decode; the test skips where torch is not installed, the
    rest of this file runs (tests/c/windows_python.sh without PyTorch's Windows wheel, say)."""
    pytest.importorskip("torch")
    from reference_decoder import reference_decode as decode
    return decode(*args, **kwargs)


def fixture_decoder(name):
    weights, data = load_fixture(name)
    return wv.Decoder(weights, mean=data["mean"], std=data["std"]), data


@pytest.mark.parametrize("name", ["tiny", "small", "single_frame"])
@pytest.mark.parametrize("end_frame", [False, True])
def test_fixture_raw(name, end_frame):
    dec, data = fixture_decoder(name)
    expected = data["expected_end_raw" if end_frame else "expected_raw"].transpose(1, 2, 3, 0)
    out = dec.decode(data["latents"], raw=True, end_frame=end_frame, enable_vae_tiling=False)
    assert out.shape == expected.shape and out.dtype == np.float32
    assert np.abs(out - expected).max() <= FIXTURE_TOL


@pytest.mark.parametrize("threads", ["1", "3"])
def test_fixture_on_a_chosen_number_of_cpu_threads(monkeypatch, threads):
    """WANVIDEO_CPU_THREADS sets the CPU backend's threads (read when a Decoder is made): the caller
    alone, or a team of three, whatever the CPUs; the frames are the same, untiled and in tiles."""
    monkeypatch.setenv("WANVIDEO_CPU_THREADS", threads)
    assert wv.backends()["cpu"]["threads"] == int(threads)
    dec, data = fixture_decoder("small")
    expected = data["expected_raw"].transpose(1, 2, 3, 0)
    for tiles in (dict(enable_vae_tiling=False), dict(tile_x=24, tile_y=24, tile_stride_x=8, tile_stride_y=8)):
        assert np.abs(dec.decode(data["latents"], raw=True, **tiles) - expected).max() <= FIXTURE_TOL


def test_fixture_default_output_is_clamped_unit_range():
    dec, data = fixture_decoder("tiny")
    out = dec.decode(data["latents"], enable_vae_tiling=False)
    expected = to_unit(data["expected_raw"].transpose(1, 2, 3, 0))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - expected).max() <= FIXTURE_TOL


@pytest.mark.parametrize("end_frame", [False, True])
def test_uint8_frames_are_the_unit_frames_as_bytes(end_frame):
    """dtype=np.uint8: the [0, 1] image as bytes, (x * 255 + 0.5) truncated: byte for byte what
    media.to_uint8 makes of the float32 frames, untiled and in tiles, and within a step of the golden
    output's."""
    dec, data = fixture_decoder("small")
    golden = to_uint8(to_unit(data["expected_end_raw" if end_frame else "expected_raw"].transpose(1, 2, 3, 0)))
    got = dec.decode(data["latents"], end_frame=end_frame, enable_vae_tiling=False, dtype=np.uint8)
    assert got.dtype == np.uint8 and got.shape == golden.shape
    assert np.abs(got.astype(int) - golden).max() <= 1
    lat = 3 * data["latents"]  # frames that clamp, at both ends
    for tiles in (dict(enable_vae_tiling=False), dict(tile_x=24, tile_y=24, tile_stride_x=8, tile_stride_y=8)):
        want = to_uint8(dec.decode(lat, end_frame=end_frame, **tiles))
        assert (want == 0).any() and (want == 255).any()
        np.testing.assert_array_equal(dec.decode(lat, end_frame=end_frame, dtype="uint8", **tiles), want)
        assert dec.last_stats["dtype"] == dec.plan(*lat.shape[1:], dtype=np.uint8, **tiles)["dtype"] == "uint8"


def test_uint8_is_named_by_numpy_or_torch():
    dec, data = fixture_decoder("single_frame")
    torch = pytest.importorskip("torch")
    for dtype in (np.uint8, "uint8", np.dtype("u1"), torch.uint8):
        assert dec.decode(data["latents"], dtype=dtype).dtype == np.uint8
    for dtype in (np.float32, "float32", torch.float32, None):
        assert dec.decode(data["latents"], dtype=dtype).dtype == np.float32
    with pytest.raises(wv.WanVAEError, match=r"^dtype must be float32 or uint8 \(the frames' type\), got "
                                             r"torch\.bfloat16$"):
        dec.decode(data["latents"], dtype=torch.bfloat16)


def test_batched_latents_accepted():
    dec, data = fixture_decoder("single_frame")
    a = dec.decode(data["latents"], raw=True, enable_vae_tiling=False)
    b = dec.decode(data["latents"][None], raw=True, enable_vae_tiling=False)
    np.testing.assert_array_equal(a, b)


def test_statistics_given_to_one_decode_are_the_ones_it_uses():
    """decode(mean=, std=) un-normalizes that call's latents with them (as a Decoder made with them
    would), and the Decoder keeps its own for the next call."""
    weights, data = load_fixture("tiny")
    dec = wv.Decoder(weights, mean=[0.0] * 4, std=[1.0] * 4)
    expected = data["expected_raw"].transpose(1, 2, 3, 0)
    out = dec.decode(data["latents"], raw=True, enable_vae_tiling=False, mean=data["mean"], std=data["std"])
    assert np.abs(out - expected).max() <= FIXTURE_TOL
    assert dec.mean == [0.0] * 4 and dec.std == [1.0] * 4
    assert np.abs(dec.decode(data["latents"], raw=True, enable_vae_tiling=False) - expected).max() > 1e-2


@pytest.mark.parametrize("dim,z_dim,T,h,w", [
    (8, 4, 1, 3, 5),
    (8, 16, 2, 5, 3),
    (16, 4, 5, 3, 3),
    (16, 16, 2, 7, 5),
    (8, 4, 5, 1, 1),
    (24, 16, 2, 3, 4),  # WanVideoWrapper's lightVAE: the decoder pruned to widths 96, 96, 96, 48, 24
])
def test_matches_torch_reference(dim, z_dim, T, h, w):
    weights = random_weights(dim, z_dim, seed=dim + z_dim + T)
    mean, std = random_stats(z_dim)
    lat = random_latents(z_dim, T, h, w, seed=T * h * w)
    expected = reference_decode(weights, lat, mean, std)
    out = wv.decode_tiled(weights, lat, mean=mean, std=std, raw=True, enable_vae_tiling=False)
    assert out.shape == (1 + 4 * (T - 1), 8 * h, 8 * w, 3)
    assert np.abs(out - expected).max() <= REFERENCE_TOL * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("tiling", [
    dict(enable_vae_tiling=False),  # one tile: the trunk streams beside it
    dict(tile_x=40, tile_y=40, tile_stride_x=8, tile_stride_y=8),  # the trunk's frames kept, then each tile
])
def test_end_frame_matches_torch_reference(tiling):
    weights = random_weights(8, 4, seed=3)
    mean, std = random_stats(4)
    lat = random_latents(4, 4, 3, 4)
    expected = reference_decode(weights, lat, mean, std, end_frame=True)
    out = wv.decode_tiled(weights, lat, mean=mean, std=std, raw=True, end_frame=True, **tiling)
    assert out.shape == expected.shape == (10, 24, 32, 3)
    assert np.abs(out - expected).max() <= REFERENCE_TOL


@pytest.mark.parametrize("T", [1, 2, 3])
def test_end_frame_of_short_sequences_matches_torch_reference(T):
    """End-frame mode on sequences of 1 to 3 latent frames: the first T - 1 as a sequence, then the last
    alone (at T = 2, one frame each: 2 frames, not 1)."""
    weights = random_weights(8, 4, seed=5)
    mean, std = random_stats(4)
    lat = random_latents(4, T, 3, 4, seed=T)
    expected = reference_decode(weights, lat, mean, std, end_frame=True)
    out = wv.decode_tiled(weights, lat, mean=mean, std=std, raw=True, end_frame=True, enable_vae_tiling=False)
    assert out.shape == expected.shape == (1 if T == 1 else 1 + 4 * (T - 2) + 1, 24, 32, 3)
    assert np.abs(out - expected).max() <= REFERENCE_TOL
    assert wv.Decoder(weights).plan(T, 3, 4, end_frame=True)["frames"] == out.shape[0]


@pytest.mark.parametrize("scale", [1e-9, 1e-11])
def test_rms_norm_of_tiny_activations_matches_torch_reference(scale):
    """Latents near 1e-9 (1e-11) without biases keep every activation tiny, far below 1e-6 (1e-10) but
    above the norm's floor of 1e-12: each norm still scales its pixel to sqrt(C) (an eps of 1e-6, or
    1e-10, would not)."""
    weights = {k: (v * 0 if k.endswith("bias") else v) for k, v in random_weights(8, 4, seed=7).items()}
    mean, std = np.zeros(4, np.float32), np.ones(4, np.float32)
    lat = random_latents(4, 2, 4, 4, seed=7) * np.float32(scale)
    expected = reference_decode(weights, lat, mean, std)
    out = wv.decode_tiled(weights, lat, mean=mean, std=std, raw=True, enable_vae_tiling=False)
    assert np.abs(expected).max() > 0.1  # not the floor's zeros
    assert np.abs(out - expected).max() <= REFERENCE_TOL * max(1.0, np.abs(expected).max())


def test_streaming_is_causal_prefix_exact():
    """Streaming one latent frame at a time: decoding a prefix gives the prefix of the frames."""
    weights = random_weights(8, 4, seed=5)
    mean, std = random_stats(4)
    lat = random_latents(4, 5, 3, 3)
    dec = wv.Decoder(weights, mean=mean, std=std)
    full = dec.decode(lat, raw=True, enable_vae_tiling=False)
    for k in (1, 2, 4):
        part = dec.decode(np.ascontiguousarray(lat[:, :k]), raw=True, enable_vae_tiling=False)
        np.testing.assert_allclose(part, full[:part.shape[0]], atol=1e-6, rtol=0)


def test_full_size_decoder_matches_reference():
    """DESIGN.md config (dim 96, z 16): [16, 3, 16, 16] -> [9, 128, 128, 3] within 1e-3."""
    weights = random_weights(96, 16, seed=42)
    lat = random_latents(16, 3, 16, 16, seed=1)
    out = wv.decode_tiled(weights, lat, raw=True, enable_vae_tiling=False)
    expected = reference_decode(weights, lat, np.array(wv.WAN21_MEAN), np.array(wv.WAN21_STD))
    assert out.shape == (9, 128, 128, 3)
    assert np.abs(out - expected).max() <= 1e-3


@pytest.mark.parametrize("prefix", ["", "model."])
def test_safetensors_with_and_without_prefix(tmp_path, prefix):
    weights, data = load_fixture("tiny")
    tensors = {prefix + k: v for k, v in weights.items()}
    tensors[prefix + "encoder.conv1.weight"] = np.zeros((4, 3, 3, 3, 3), np.float32)  # ignored
    path = tmp_path / "VAE.SafeTensors"  # the extension in any case, as Windows users name files
    write_safetensors(path, tensors)
    loaded = wv.load_weights(path)
    assert set(loaded) == set(weights)
    out = wv.decode_tiled(loaded, data["latents"], mean=data["mean"], std=data["std"], raw=True,
                          enable_vae_tiling=False)
    assert np.abs(out - data["expected_raw"].transpose(1, 2, 3, 0)).max() <= FIXTURE_TOL


@pytest.mark.parametrize("name", ["vae.pth", "vae.pt", "vae.ckpt", "pytorch_model.bin", "VAE.PTH"])
def test_pth_state_dict(tmp_path, name):
    torch = pytest.importorskip("torch")
    weights, data = load_fixture("single_frame")
    path = tmp_path / name
    torch.save({"model." + k: torch.from_numpy(v) for k, v in weights.items()}, path)
    out = wv.decode_tiled(wv.load_weights(path), data["latents"], mean=data["mean"], std=data["std"], raw=True,
                          enable_vae_tiling=False)
    assert np.abs(out - data["expected_raw"].transpose(1, 2, 3, 0)).max() <= FIXTURE_TOL


def _round_through(weights, torch_dtype):
    import torch
    return {k: torch.from_numpy(v).to(torch_dtype) for k, v in weights.items()}


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_inputs_are_converted_exactly(dtype_name):
    """fp16/bf16 weights and latents decode exactly like their values widened to fp32."""
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype_name)
    weights, data = load_fixture("tiny")
    half_w = _round_through(weights, dt)
    half_lat = torch.from_numpy(data["latents"]).to(dt)
    widened_w = {k: v.float().numpy() for k, v in half_w.items()}
    widened_lat = half_lat.float().numpy()
    a = wv.decode_tiled(half_w, half_lat, mean=data["mean"], std=data["std"], raw=True, enable_vae_tiling=False)
    b = wv.decode_tiled(widened_w, widened_lat, mean=data["mean"], std=data["std"], raw=True, enable_vae_tiling=False)
    np.testing.assert_array_equal(a, b)
    # and they stay close to the fp32 golden output (the error is the inputs' rounding, not ours)
    mean_tol = 0.01 if dtype_name == "bfloat16" else 1e-3
    assert np.abs(a - data["expected_raw"].transpose(1, 2, 3, 0)).mean() <= mean_tol


def test_bf16_safetensors_and_numpy_fp16(tmp_path):
    torch = pytest.importorskip("torch")
    weights, data = load_fixture("single_frame")
    bf = {k: torch.from_numpy(v).bfloat16().view(torch.int16).numpy().view("V2") for k, v in weights.items()}
    path = tmp_path / "bf16.safetensors"
    write_safetensors(path, bf)
    loaded = wv.load_weights(path)
    assert all(v.dtype == np.dtype("V2") for v in loaded.values())
    widened = {k: wv.bf16_to_float32(v) for k, v in loaded.items()}
    a = wv.decode_tiled(loaded, data["latents"].astype(np.float16), mean=data["mean"], std=data["std"], raw=True,
                        enable_vae_tiling=False)
    b = wv.decode_tiled(widened, data["latents"].astype(np.float16).astype(np.float32), mean=data["mean"],
                        std=data["std"], raw=True, enable_vae_tiling=False)
    np.testing.assert_array_equal(a, b)


def test_non_contiguous_latents():
    dec, data = fixture_decoder("tiny")
    lat = data["latents"]
    strided = np.asfortranarray(lat)  # same values, different strides
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(dec.decode(strided, raw=True, enable_vae_tiling=False),
                                  dec.decode(lat, raw=True, enable_vae_tiling=False))


def test_backends_reports_cpu():
    feats = wv.backends()
    assert feats["cpu"]["compiled"] and feats["cpu"]["usable"] and feats["cpu"]["reason"] == ""
    assert 1 <= feats["cpu"]["threads"] <= 1024
    assert len(feats["cpu"]["ops"]) == feats["cpu"]["op_count"]
    # the BLAS's own description, naming the kernels it runs: "OpenBLAS 0.3.34.481.3 DYNAMIC_ARCH ... SkylakeX ..."
    assert feats["cpu"]["blas"].startswith("OpenBLAS 0.")


def test_backends_says_why_the_blas_is_not_described(monkeypatch):
    def broken():
        raise OSError("no library")
    monkeypatch.setattr(wv.api._openblas, "get_openblas_config", broken)
    assert wv.backends()["cpu"]["blas"] == "unknown (OSError: no library)"


def test_expected_key_table_matches_reference_file():
    import pathlib
    from helpers import SHARED
    text = pathlib.Path(SHARED, "reference", "wan21_decoder_keys.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("n_keys")]
    table = {k: eval(s) for k, s in rows}  # shapes are Python tuples in the file
    ours = dict(wv._C.expected_keys(96, 16))
    assert ours == {k: tuple(v) for k, v in table.items()}
    dec = wv.Decoder(random_weights(96, 16))
    assert dec._model.n_params == 73295603
    assert dec._model.cache_slots == 32
    assert dec._model.weight_bytes == 4 * sum(_aligned_cpu_elems(k, shape) for k, shape in ours.items())


def _aligned_cpu_elems(key, shape):
    """Elements a parameter takes in the CPU backend's weight memory: each starts on a 64-element
    boundary; an upsample's resample conv is stored sub-pixel (four 2x2 phases: 16 taps a channel pair
    for the 3x3's 9), its bias once per phase."""
    n = int(np.prod(shape))
    if key.endswith("resample.1.weight"):
        n = n // 9 * 16
    elif key.endswith("resample.1.bias"):
        n *= 4
    return -(-n // 64) * 64


def test_profile_times_every_op_and_changes_nothing():
    weights = random_weights(8, 4, seed=3)
    mean, std = random_stats(4)
    dec = wv.Decoder(weights, mean=mean, std=std)
    lat = random_latents(4, 3, 6, 7, seed=3)
    plain = dec.decode(lat, raw=True, tile_x=40, tile_y=40, tile_stride_x=8, tile_stride_y=8)
    assert "op_seconds" not in dec.last_stats
    profiled = dec.decode(lat, raw=True, tile_x=40, tile_y=40, tile_stride_x=8, tile_stride_y=8, profile=True)
    np.testing.assert_array_equal(profiled, plain)
    ops = dec.last_stats["op_seconds"]
    assert {"conv", "rms_norm", "attention", "pixel_shuffle", "copy_channels", "write_output", "load_latent"} <= set(ops)
    assert ops["load_latent"][1] == 3 and ops["write_output"][1] == dec.last_stats["frames"] * dec.last_stats["n_tiles"]
    assert 0 < sum(sec for sec, _, _ in ops.values()) <= dec.last_stats["seconds_total"]
    assert all(0 <= host <= sec for sec, _, host in ops.values())
    convs = dec.last_stats["conv_seconds"]  # every convolution, by its checkpoint name
    assert set(convs) == {k[:-len(".weight")] for k in weights if k.endswith(".weight")}
    assert sum(calls for _, calls, _ in convs.values()) == ops["conv"][1]
    assert sum(sec for sec, _, _ in convs.values()) == pytest.approx(ops["conv"][0], rel=1e-9)
    head = convs["decoder.head.2"]  # 3x3x3, 8 -> 3 channels, one frame of the padded tile grid a call
    assert head[2] % (2 * 3 * 8 * 27) == 0 and head[2] > 0


def test_bf16_weights_or_activations_alone_err_past_2e2_on_the_tiny_fixture():
    """What tests/test_cuda.py's 16-bit tolerance rests on (README, tools/bf16_error_sources.py): on
    the tiny fixture, its float32 weights rounded to bf16 err more than 2e-2 (activations float32),
    and so do the stored activations rounded (weights float32), while a decoder rounding both keeps
    40 dB and errs less than PyTorch's own bf16 decode, also with the causal convolutions'
    taps summed in bf16 as the CUDA backend does."""
    import importlib.util
    import os
    pytest.importorskip("torch")  # the tool's decoders are PyTorch's
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "bf16_error_sources.py")
    spec = importlib.util.spec_from_file_location("bf16_error_sources", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    weights_only, acts_only, both, by_taps = (label for label, _ in tool.ROWS[:4])
    rows = dict(tool.error_rows("tiny", [weights_only, acts_only, both, by_taps, tool.TORCH_ROW]))
    assert rows[weights_only]["max"] > 2e-2, rows
    assert rows[acts_only]["max"] > 2e-2, rows
    for label in (both, by_taps):  # by taps: the CUDA backend's equal-width convs, rounded after each tap
        assert rows[label]["psnr"] >= 40.0, rows
        assert rows[label]["max"] < rows[tool.TORCH_ROW]["max"], rows
    assert rows[by_taps]["psnr"] > rows[both]["psnr"] - 2.0, rows  # 0.6 dB here


def test_decode_tiled_hands_every_argument_on(monkeypatch):
    """The one-shot call is Decoder(...).decode(...): each of its arguments reaches one of the two, as
    given, and the Decoder is closed after."""
    import inspect
    from wanvideo_vae import api
    seen = {}

    class Recorder:
        def __init__(self, weights, **kw):
            seen.update(kw, weights=weights)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            seen["closed"] = True

        def decode(self, latents, **kw):
            seen.update(kw, latents=latents)
            return "frames"

    monkeypatch.setattr(api, "Decoder", Recorder)
    names = list(inspect.signature(wv.decode_tiled).parameters)
    given = {name: object() for name in names}
    assert wv.decode_tiled(**given) == "frames"
    assert all(seen[name] is given[name] for name in names) and seen["closed"]


def test_other_threads_run_while_a_plan_is_made():
    """A plan of a large frame walks its tiles (here some 930000) and may take a while: other threads
    (ComfyUI's server) run meanwhile, as the GIL is released while planning. Held, they got at most
    the switch before the call and the one after."""
    import threading
    dec = wv.Decoder(random_weights(8, 4, seed=3), mean=[0.0] * 4, std=[1.0] * 4)
    ticks, done = [0], threading.Event()

    def tick():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        before = ticks[0]
        plan = dec.plan(1, 16384, 16384, tile_x=150, tile_y=150, tile_stride_x=8, tile_stride_y=8, max_memory=2**62)
        during = ticks[0] - before
    finally:
        done.set()
        ticker.join()
    assert plan["n_tiles"] > 900_000 and during >= 5, (plan["n_tiles"], during)


def test_last_stats_are_each_threads_own():
    """Threads sharing a Decoder each read their own decode's stats in last_stats (a ComfyUI node logs
    them after its decode, when another thread's may have ended since); a thread that made none
    reads the last of any."""
    import threading
    dec = wv.Decoder(random_weights(8, 4, seed=3), mean=[0.0] * 4, std=[1.0] * 4)
    first_done, second_done, seen = threading.Event(), threading.Event(), {}

    def first():
        dec.decode(random_latents(4, 1, 4, 8, seed=1), enable_vae_tiling=False)
        first_done.set()
        second_done.wait(60)  # the other thread's decode ends before this one reads its stats
        seen["first"] = dec.last_stats["width"]

    def second():
        first_done.wait(60)
        dec.decode(random_latents(4, 1, 4, 12, seed=2), enable_vae_tiling=False)
        second_done.set()
        seen["second"] = dec.last_stats["width"]

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"first": 64, "second": 96}
    assert dec.last_stats["width"] == 96
