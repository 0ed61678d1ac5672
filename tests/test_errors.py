"""Every bad input gets a clear error naming the problem (the README's table, row by row), and
nothing we accept crashes or leaks: allocation failure, interrupt, threads, fuzzing."""
import contextlib
import decimal
import fractions
import functools
import gc
import json
import os
import pathlib
import re
import struct
import sys
import threading
import types
import warnings

import numpy as np
import pytest

import wanvideo_vae as wv
from wanvideo_vae import api
from wanvideo_vae.cli import current_rss_bytes
from helpers import REPO, package_root, random_latents, random_stats, random_weights, write_safetensors

E = wv.WanVAEError


@pytest.fixture(scope="module")
def small():
    mean, std = random_stats(4)
    return wv.Decoder(random_weights(8, 4, seed=1), mean=mean, std=std)


def lat(T=2, h=3, w=4, z=4):
    return random_latents(z, T, h, w)


def decoder_with_cpu_threads(value):
    """A CPU Decoder made with WANVIDEO_CPU_THREADS set to value (the environment restored after)."""
    old = os.environ.get("WANVIDEO_CPU_THREADS")
    os.environ["WANVIDEO_CPU_THREADS"] = value
    try:
        return wv.Decoder(random_weights(8, 4))
    finally:
        if old is None:
            del os.environ["WANVIDEO_CPU_THREADS"]
        else:
            os.environ["WANVIDEO_CPU_THREADS"] = old


class CAI:
    """An object exposing a CUDA array interface dict."""

    def __init__(self, **iface):
        self.__cuda_array_interface__ = iface


class AI:
    """An object exposing a host array interface dict."""

    def __init__(self, **iface):
        self.__array_interface__ = iface


def weights_without(key):
    w = random_weights(8, 4)
    del w[key]
    return w


def weights_with(key, value):
    w = random_weights(8, 4)
    w[key] = value
    return w


def overflowing_decoder(key="decoder.head.2.weight", **kw):
    """A small decoder one of whose convolutions sums past float32's range (3.4e38): the head's makes
    Inf frames; the first one's makes Infs that the norms after it turn to NaN (Inf / Inf)."""
    w = random_weights(8, 4)
    w[key] = w[key] * np.float32(3e38)
    mean, std = random_stats(4)
    return wv.Decoder(w, mean=mean, std=std, **kw)


def encoder_only_safetensors(tmp):
    path = os.path.join(tmp, "encoder.safetensors")
    write_safetensors(path, {"encoder.conv1.bias": np.zeros(3, np.float32)})
    return path


def corrupt_safetensors(tmp, kind):
    path = os.path.join(tmp, f"{kind}.safetensors")
    good = os.path.join(tmp, "good.safetensors")
    write_safetensors(good, {"decoder.head.2.bias": np.zeros(3, np.float32)})
    raw = pathlib.Path(good).read_bytes()
    if kind == "header_past_end":
        raw = (10 ** 9).to_bytes(8, "little") + raw[8:]
    elif kind == "header_over_limit":  # a length safetensors refuses, within the file: not read
        raw = (10 ** 8 + 1).to_bytes(8, "little") + raw[8:]
    elif kind == "bad_json":
        n = int.from_bytes(raw[:8], "little")
        raw = raw[:8] + b"{" * n + raw[8 + n:]
    elif kind == "offsets":
        raw = raw.replace(b"[0, 12]", b"[0, 99]")
    elif kind == "truncated":
        raw = raw[:-4]
    elif kind == "lfs_pointer":  # what a clone without git-lfs leaves
        raw = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 507609880\n")
    elif kind == "header_cut":  # a download that stopped inside the header
        raw = raw[:12]
    elif kind == "one_bogus_entry":  # a truncated file whose header also holds an entry of nonsense offsets
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        header["x.bogus"] = {"dtype": "F32", "shape": [3], "data_offsets": [12, 10**15]}
        text = json.dumps(header).encode()
        raw = len(text).to_bytes(8, "little") + text + raw[8 + n:-4]
    elif kind == "zip":  # a .pth renamed
        raw = b"PK\x03\x04" + bytes(60)
    elif kind == "html_page":  # what a download refused by a login wall saves
        raw = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>\n"
    elif kind == "negative_dim":
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        header["decoder.head.2.bias"]["shape"] = [-1, -3]
        text = json.dumps(header).encode()
        raw = len(text).to_bytes(8, "little") + text + raw[8 + n:]
    with open(path, "wb") as f:
        f.write(raw)
        if kind == "header_over_limit":
            f.truncate(10 ** 8 + 100)
    return path


@functools.lru_cache(maxsize=1)
def full_decoder():
    """The full-size decoder (z_dim 16, random weights), made once."""
    return wv.Decoder(random_weights(96, 16, seed=0))


def safetensors_named_pth(tmp):
    path = os.path.join(tmp, "named.pth")
    write_safetensors(path, {"decoder.head.2.bias": np.zeros(3, np.float32)})
    return path


def truncated_pth(tmp):
    torch = pytest.importorskip("torch")
    path = os.path.join(tmp, "truncated.pth")
    torch.save({"decoder.head.2.bias": torch.zeros(3)}, path)
    raw = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(raw[:len(raw) // 2])
    return path


# (README row, call, exception type, message pattern)
CASES = [
    ("latents of the wrong rank", lambda d, t: d.decode(np.zeros((4, 2, 3), np.float32)), E, r"\[z, T, h, w\]"),
    ("a batch of several videos", lambda d, t: d.decode(np.zeros((2, 4, 1, 3, 3), np.float32)), E, "one video at a time"),
    ("latent channels that do not match the weights' z_dim", lambda d, t: d.decode(lat(z=5)), E,
     r"^latents have 5 channels; the weights have z_dim=4$"),
    ("Wan 2.2 TI2V-5B latents (48 channels) for the Wan 2.1 VAE",
     lambda d, t: full_decoder().decode(np.zeros((48, 1, 2, 2), np.float32)), E,
     r"^latents have 48 channels; the weights have z_dim=16 \(48 channels: latents of Wan 2\.2's TI2V-5B model, which "
     r"need its own VAE, the Wan 2\.2 VAE; this decoder is Wan 2\.1's, which Wan 2\.2's 14B models use too\)$"),
    ("T, h or w of 0", lambda d, t: d.decode(np.zeros((4, 0, 3, 3), np.float32)), E, r"T, h, w >= 1"),
    ("NaN or Inf in the latents", lambda d, t: d.decode(np.where(lat() > 2, np.inf, lat()).astype(np.float32)), E,
     "NaN or Inf"),
    ("integer, bool or complex arrays", lambda d, t: d.decode(lat().astype(np.int32)), E,
     "unsupported dtype int32; expected float32, float16 or bfloat16"),
    ("negative strides in a raw array interface (a NumPy array with them is copied)",
     lambda d, t: (lambda a: d.decode(AI(**a.__array_interface__)))(lat()[:, :, :, ::-1]), E,
     "negative stride -4 on axis 3 is not supported$"),
    ("an array interface without shape, typestr or data", lambda d, t: d.decode(AI(typestr="<f4", data=(0, True))),
     E, "no 'shape'"),
    ("an unsupported typestr (big-endian, float64, int)", lambda d, t: d.decode(AI(shape=(4, 1, 1, 1), typestr=">f4",
                                                                                   data=(0, True), version=3)),
     E, "unsupported dtype"),
    ("a null data pointer with a nonzero size", lambda d, t: d.decode(AI(shape=(4, 1, 1, 1), typestr="<f4",
                                                                         data=(0, True), version=3)),
     E, "null data pointer"),
    ("a data pointer that is negative or not an int",
     lambda d, t: d.decode(AI(shape=(4, 1, 1, 1), typestr="<f4", data=(-8, True), version=3)), E,
     r"data pointer -8 is not an address"),
    ("device (CUDA array interface) latents on the CPU backend",
     lambda d, t: d.decode(CAI(shape=(4, 1, 2, 2), typestr="<f4", data=(4096, False), version=3, stream=None)), E,
     "CUDA device memory"),
    ("CUDA array interface stream 0",
     lambda d, t: d.decode(CAI(shape=(4, 1, 2, 2), typestr="<f4", data=(8, False), version=3, stream=0)), E,
     r"^latents: CUDA array interface stream 0 is disallowed by the protocol$"),
    ("a CUDA array interface stream that is negative",
     lambda d, t: d.decode(CAI(shape=(4, 1, 2, 2), typestr="<f4", data=(8, False), version=3, stream=-5)), E,
     r"^latents: CUDA array interface stream -5 is not a stream \(1: legacy default, 2: per-thread default, else a "
     r"cudaStream_t\)$"),
    ("a device pointer not aligned to its elements",
     lambda d, t: d.decode(CAI(shape=(4, 1, 2, 2), typestr="<f4", data=(4098, False), version=3)), E,
     r"^latents: data pointer 0x1002 is not aligned to its 4-byte elements$"),
    ("array extents that multiply past 2**56",
     lambda d, t: d.decode(AI(shape=(4, 2**30, 2**30, 1), typestr="<f4", data=(8, False), version=3)), E,
     r"^latents: extents multiply past 2\*\*56 \(a shape of 4 dimensions\)$"),
    ("array strides that put an element past 2**56 bytes",
     lambda d, t: d.decode(AI(shape=(4, 2, 3, 3), typestr="<f4", data=(8, False), strides=(2**62, 4, 4, 4),
                              version=3)), E, r"^latents: strides put the last element past 2\*\*56 bytes from the first$"),
    ("latents larger than 100000 in T, h or w",
     lambda d, t: d.decode(np.broadcast_to(np.float32(0), (4, 1, 1, 100001))), E, "must be at most 100000"),
    ("a two-byte structured dtype (not bfloat16)",
     lambda d, t: d.decode(np.zeros((4, 1, 2, 2), dtype=[("a", "i1"), ("b", "i1")])), E, "structured dtype"),
    ("a non-array object", lambda d, t: d.decode("latents"), E, "expected a NumPy array"),
    ("weights that are not a dict", lambda d, t: wv.Decoder([1, 2]), E, "must be a dict"),
    ("a missing weight", lambda d, t: wv.Decoder(weights_without("decoder.head.2.bias")), E,
     "missing weight 'decoder.head.2.bias'"),
    ("an unexpected decoder weight", lambda d, t: wv.Decoder(weights_with("decoder.extra.weight", np.zeros(3, np.float32))),
     E, "unexpected weight 'decoder.extra.weight'"),
    ("a misshaped weight", lambda d, t: wv.Decoder(weights_with("decoder.head.2.bias", np.zeros(4, np.float32))), E,
     r"'decoder.head.2.bias' has shape \(4\); expected \(3\)"),
    ("two keys naming one weight ('model.' prefix or not)",
     lambda d, t: wv.Decoder(weights_with("model.decoder.head.2.bias", np.zeros(3, np.float32))), E,
     "'decoder.head.2.bias' and 'model.decoder.head.2.bias' both name the decoder weight"),
    ("weights none of which is the decoder's", lambda d, t: wv.Decoder({"vae." + k: v for k, v in
                                                                       random_weights(8, 4).items()}), E,
     r"^none of the \d+ weights is the decoder's \(the decoder's keys start with 'decoder\.' or 'conv2\.', perhaps "
     r"after 'model\.'; diffusers' with 'decoder\.' or 'post_quant_conv\.'\); the first is 'vae\."),
    ("weights of the Wan 2.2 VAE's layout (its checkpoint's names or diffusers')",
     lambda d, t: wv.Decoder(weights_with("decoder.up_blocks.0.upsampler.resample.1.weight", np.zeros(3, np.float32))),
     E, r"^these weights have the Wan 2\.2 VAE's layout \(the Wan 2\.2 TI2V-5B model's VAE\); this decoder decodes "
        r"the Wan 2\.1 VAE only \(which the Wan 2\.2 14B models use\)$"),
    ("a diffusers weight of no Wan 2.1 decoder key",
     lambda d, t: wv.Decoder(weights_with("decoder.up_blocks.3.upsamplers.0.resample.1.weight",
                                          np.zeros(3, np.float32))),
     E, r"^unexpected weight 'decoder\.up_blocks\.3\.upsamplers\.0\.resample\.1\.weight' \(not a Wan 2\.1 decoder key"),
    ("NaN or Inf in a weight",
     lambda d, t: wv.Decoder(weights_with("decoder.head.2.bias", np.array([np.inf, 0, 0], np.float32))), E,
     "weight 'decoder.head.2.bias' contains NaN or Inf"),
    ("a weight of an unsupported dtype", lambda d, t: wv.Decoder(weights_with("decoder.head.2.bias", np.zeros(3, np.int64))),
     E, "unsupported dtype"),
    ("a weight name holding a NUL character",
     lambda d, t: wv.Decoder(weights_with("decoder.head.2.bias\0junk", np.zeros(3, np.float32))), E,
     r"key 'decoder.head.2.bias\\x00junk' holds a NUL character"),
    ("a decode that overflows (NaN or Inf out of finite latents)",
     lambda d, t: overflowing_decoder().decode(lat(), raw=True), E,
     r"^the decode produced NaN or Inf: an activation went past float32's range \(3\.4e38\), from latents or weights "
     r"far larger than a Wan 2\.1 VAE's \(a damaged checkpoint\?\)$"),  # the README's row
    ("mean or std of the wrong length", lambda d, t: d.decode(lat(), mean=[0.0] * 3), E, "z_dim=4"),
    ("mean or std with NaN", lambda d, t: d.decode(lat(), std=[float("nan")] * 4), E, "NaN or Inf"),
    ("mean or std that are not numbers", lambda d, t: d.decode(lat(), mean={"0": 0.1}), E,
     "^mean must be a sequence of numbers, got dict$"),
    ("complex mean or std", lambda d, t: d.decode(lat(), mean=np.ones(4, np.complex64)), E, "real numbers"),
    ("mean or std with a None", lambda d, t: d.decode(lat(), mean=[0.0, None, 0.0, 0.0]), E,
     "^mean must be a sequence of numbers, got None or strings among them$"),  # was "contains NaN or Inf"
    ("mean or std of strings", lambda d, t: d.decode(lat(), std=["1"] * 4), E,
     "^std must be a sequence of numbers, got strings among them$"),  # were read as numbers
    ("a safetensors header length past the end of the file",
     lambda d, t: wv.load_weights(corrupt_safetensors(t, "header_past_end")), E, "past the end"),
    ("a safetensors header length past the format's limit",
     lambda d, t: wv.load_weights(corrupt_safetensors(t, "header_over_limit")), E,
     r"header_over_limit\.safetensors: not a safetensors file \(the header length its first 8 bytes give, 100000001, "
     r"is past the format's limit\)$"),
    ("a safetensors header that is not JSON", lambda d, t: wv.load_weights(corrupt_safetensors(t, "bad_json")), E,
     "not valid JSON"),
    ("safetensors data offsets out of range", lambda d, t: wv.load_weights(corrupt_safetensors(t, "offsets")), E,
     "out of range"),
    ("a safetensors tensor with a negative dimension",
     lambda d, t: wv.load_weights(corrupt_safetensors(t, "negative_dim")), E, "negative dimension"),
    ("a truncated safetensors file", lambda d, t: wv.load_weights(corrupt_safetensors(t, "truncated")), E,
     r"truncated\.safetensors: truncated: its tensors run to byte 100 but the file has 96 bytes \(an incomplete "
     r"download\? download it again\)$"),
    ("a safetensors file cut inside its header", lambda d, t: wv.load_weights(corrupt_safetensors(t, "header_cut")),
     E, r"header_cut\.safetensors: truncated: its header runs to byte 88 but the file has 12 bytes \(an incomplete "
        r"download\? download it again\)$"),
    ("a Git LFS pointer in place of a checkpoint", lambda d, t: wv.load_weights(corrupt_safetensors(t, "lfs_pointer")),
     E, r"lfs_pointer\.safetensors: a Git LFS pointer, not the model itself \(fetch it with git lfs pull, or download "
        r"the file\)$"),
    ("a PyTorch checkpoint named .safetensors", lambda d, t: wv.load_weights(corrupt_safetensors(t, "zip")), E,
     r"zip\.safetensors: a zip archive, as PyTorch saves a checkpoint, not a safetensors file: name it \.pth$"),
    ("a safetensors checkpoint named .pth", lambda d, t: wv.load_weights(safetensors_named_pth(t)), E,
     r"named\.pth: a safetensors file, not a PyTorch one: name it \.safetensors$"),
    ("an HTML page in place of a checkpoint", lambda d, t: wv.load_weights(corrupt_safetensors(t, "html_page")), E,
     r"html_page\.safetensors: an HTML page, not a safetensors file \(a download that saved an error or login page\? "
     r"download it again\)$"),
    ("a truncated .pth checkpoint", lambda d, t: wv.load_weights(truncated_pth(t)), E,
     r"truncated\.pth: PyTorch could not read it \(.+\): a damaged or incomplete file\? download it again$"),
    ("a checkpoint of unknown format", lambda d, t: wv.load_weights(__file__), E, "unknown checkpoint format"),
    ("a missing checkpoint file", lambda d, t: wv.load_weights(os.path.join(t, "nope.safetensors")), E, "no such file"),
    ("a checkpoint without decoder weights", lambda d, t: wv.load_weights(encoder_only_safetensors(t)), E,
     r"encoder\.safetensors: no decoder weights found \(keys starting with 'decoder\.' or 'conv2\.'; diffusers' with "
     r"'decoder\.' or 'post_quant_conv\.'\)$"),
    ("a folder that holds no model", lambda d, t: wv.load_weights(t), E,
     r": is a folder, not a checkpoint file \(nor a diffusers model folder: no diffusion_pytorch_model\.safetensors "
     r"or diffusion_pytorch_model\.bin of a VAE in it or in its vae/, nor a Wan repository's folder: no "
     r"Wan2\.1_VAE\.pth\)$"),
    ("a tile not larger than its stride", lambda d, t: d.decode(lat(), tile_x=128, tile_stride_x=128), E,
     r"exceed the tile stride: got tile_x=128, tile_stride_x=128, tile_y=272, tile_stride_y=128 \(WanVideoDecode's "
     r"rule; strides change nothing in an exact decode: with small tiles pass small strides, e.g. 8\)$"),
    ("a tile smaller than the halo allows", lambda d, t: d.decode(lat(), tile_x=16, tile_y=64, tile_stride_x=8,
                                                                  tile_stride_y=8), E, "halo allows"),
    ("a tile size that is not a positive int", lambda d, t: d.decode(lat(), tile_x=-5), E, "positive int"),
    ("a memory budget too small for any tiling", lambda d, t: d.decode(lat(), max_memory=1000), MemoryError,
     r"^the decode needs 1003520 bytes \(980\.0 KiB\) of working memory but the budget is 1000 bytes; the least it "
     r"can take is 749312 bytes \(731\.8 KiB\), in 4x3 tiles of 22x22 px; of it, 3072 bytes \(3\.0 KiB\) hold the "
     r"first blocks' whole-frame output for 2 latent frames\. Pass max_memory=749312 or more\.$"),  # the README's row
    ("a memory budget of 2**63 bytes or more", lambda d, t: d.decode(lat(), max_memory=2**63), E,
     r"^max_memory must be a whole number of bytes from 1 to 2\*\*63 - 1, or None; got 9223372036854775808$"),
    ("a progress callback that is not callable", lambda d, t: d.decode(lat(), progress=3), E, "callable"),
    ("an output dtype other than float32 or uint8", lambda d, t: d.decode(lat(), dtype=np.float16), E,
     r"^dtype must be float32 or uint8 \(the frames' type\), got <class 'numpy\.float16'>$"),
    ("raw output asked for as uint8", lambda d, t: d.decode(lat(), raw=True, dtype="uint8"), E,
     r"^raw=True returns the unclamped decode, which only float32 holds; dtype=uint8 is the clamped image$"),
    ("an unknown backend", lambda d, t: wv.Decoder(random_weights(8, 4), backend="metal"), E,
     "backend must be 'cpu' or 'cuda'"),
    ("a precision the backend does not compute in", lambda d, t: wv.Decoder(random_weights(8, 4), precision="bf16"), E,
     "fp32 only"),
    ("an unknown precision", lambda d, t: wv._C.Model(random_weights(8, 4), "cuda", "fp8"), E,
     "'fp8' is not one of 'fp32', 'fp16', 'bf16'"),
    ("CPU threads (WANVIDEO_CPU_THREADS) that are not a count from 1 to 1024",
     lambda d, t: decoder_with_cpu_threads("all"), E, "WANVIDEO_CPU_THREADS must be a whole number from 1 to 1024"),
    ("a device that is not a CUDA device", lambda d, t: wv.Decoder(random_weights(8, 4), backend="cuda", device="cpu"),
     E, "device must be a CUDA device index"),
    ("a device index out of range", lambda d, t: wv.Decoder(random_weights(8, 4), backend="cuda", device=2**40), E,
     "is not a CUDA device index"),
    ("a device with the CPU backend", lambda d, t: wv.Decoder(random_weights(8, 4), device="cuda:0"), E,
     "is for the CUDA backend: pass backend='cuda'"),
    ("a CUDA device that does not exist (or no CUDA at all)",
     lambda d, t: wv.Decoder(random_weights(8, 4), backend="cuda", device=99, mean=[0.0] * 4, std=[1.0] * 4), E,
     "CUDA device 99 does not exist|no CUDA device is usable|backend 'cuda' is not available"),
    ("raw and uint8 output at once, to the C module", lambda d, t: d._model.decode(lat(), d.mean, d.std, raw=True,
                                                                                  uint8=True), E,
     r"^raw output is float32 only: uint8 frames are the clamped image, 0 to 255$"),
    ("a negative stream handle", lambda d, t: d._model.decode(lat(), d.mean, d.std, stream=-1), E,
     "stream must be a CUDA stream handle"),
]


def test_a_foreign_error_is_quoted_by_its_first_line_cut_at_a_word():
    from wanvideo_vae.arrays import first_line
    assert first_line(RuntimeError("\n  short one  \nsecond")) == "short one"
    assert first_line(RuntimeError("")) == "RuntimeError"
    cut = first_line(RuntimeError("word " * 100))
    assert len(cut) <= 300 and cut.endswith("word ...") and "wor ..." not in cut
    path = first_line(RuntimeError("failed locating file /home/user/" + "x" * 380 + "/vae.pth: not found"))
    assert len(path) == 300 and path.startswith("failed locating file /home/user/xxx") and path.endswith("x ...")


def test_the_end_a_truncated_file_should_have_is_its_sound_entries(tmp_path):
    """An entry of nonsense offsets does not make the file's expected length nonsense."""
    with pytest.raises(E, match=r"truncated: its tensors run to byte (\d+) but the file has (\d+) bytes") as e:
        wv.load_weights(corrupt_safetensors(str(tmp_path), "one_bogus_entry"))
    expected, size = (int(g) for g in re.search(r"byte (\d+) but the file has (\d+)", str(e.value)).groups())
    assert expected == size + 4


def test_a_memory_budget_may_be_a_whole_float():
    """4.5 * 2**30 is a float: a whole number of bytes all the same."""
    assert api._budget(4.5 * 2**30) == 4831838208 and api._budget(np.float32(8e6)) == 8000000
    assert isinstance(api._budget(8e9), int) and api._budget(fractions.Fraction(20, 2)) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in a cast on the way
        assert api._budget(np.float16(2048)) == 2048


@pytest.mark.parametrize("budget", [0, -1, 2**63, 1.5, 0.0, float("nan"), float("inf"), 2.0**63, True, "4GB",
                                    fractions.Fraction(10**30 + 1, 10**30), decimal.Decimal(5), np.bool_(True), 1j])
def test_a_memory_budget_is_a_positive_whole_number_or_none(small, budget):
    """0 would read as "no limit" in the core: from Python a budget is a positive count of bytes, or None
    for the machine's own."""
    for call in (lambda: small.plan(1, 2, 2, max_memory=budget), lambda: small.decode(lat(), max_memory=budget)):
        with pytest.raises(wv.WanVAEError, match=r"max_memory must be a whole number of bytes from 1 to 2\*\*63 - 1, "
                                                 r"or None; got "):
            call()


@pytest.mark.parametrize("raw", [True, False])
def test_nan_frames_are_an_error_in_either_output(raw):
    """NaN frames are refused whether raw or clamped to [0, 1] (where clamping would hide them)."""
    dec = overflowing_decoder("decoder.conv1.weight")
    with pytest.raises(wv.WanVAEError, match="the decode produced NaN or Inf"):
        dec.decode(random_latents(4, 2, 4, 4), raw=raw, enable_vae_tiling=False)


each_bad_input = pytest.mark.parametrize("row,call,exc,pattern", CASES, ids=[c[0] for c in CASES])


@each_bad_input
def test_bad_input(small, tmp_path, row, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(small, str(tmp_path))


def reference_counted(*roots):
    """The objects a call was handed that only it could keep a reference to: arrays, tensors, containers
    and array-interface holders, searched through containers and holders' attributes. Numbers and
    strings are left out: their counts move with unrelated code (shared constants, interned names)."""
    found, seen, todo = [], set(), list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type(None))):
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, dict):
            todo += obj.values()
        elif isinstance(obj, (list, tuple)):
            todo += obj
        elif isinstance(obj, np.ndarray):
            todo.append(obj.base)
        elif isinstance(getattr(obj, "__dict__", None), dict) and type(obj).__module__ == __name__:
            todo += vars(obj).values()  # AI / CAI: their interface dicts
    return found


def references_kept(objects, act):
    """(type name, count gained) of each of `objects` whose reference count `act()` changed. Both counts
    are taken alike, in a loop holding one reference."""
    before = [sys.getrefcount(o) for o in objects]
    act()
    after = [sys.getrefcount(o) for o in objects]
    return [(type(o).__name__, a - b) for o, a, b in zip(objects, after, before) if a != b]


def refused(call, exc):
    try:
        call()
    except exc:
        return True
    return False


@each_bad_input
def test_a_refusal_keeps_no_reference_to_what_it_was_given(small, tmp_path, monkeypatch, row, call, exc, pattern):
    """A host that keeps sending a bad input must not grow: the latents, weights, mean and std a
    refused Decoder() or decode() was handed (and what they hold: an array interface's dict and
    tuples) have the reference counts they had before, refusal after refusal. Counted where the case
    calls, in the settings it makes (its environment, say)."""
    grown = []

    def measured(self, real, *args, **kwargs):
        try:
            return real(self, *args, **kwargs)  # not refused: the Decoder a case's decode refuses, say
        except exc:
            pass
        def thrice():
            assert all(refused(lambda: real(self, *args, **kwargs), exc) for _ in range(3))

        grown.append(references_kept(reference_counted(args, kwargs), thrice))
        return real(self, *args, **kwargs)  # refused once more, for the case's own check

    for name in ("__init__", "decode"):
        monkeypatch.setattr(wv.Decoder, name, functools.partialmethod(measured, getattr(wv.Decoder, name)))
    with pytest.raises(exc):
        call(small, str(tmp_path))
    if not grown:
        pytest.skip("refused before a Decoder was made or asked to decode (a file that fails to load)")
    assert grown == [[]], f"references kept by three refusals: {grown}"


def test_a_decode_and_a_decoder_keep_no_reference_to_what_they_were_given():
    """What a decode was handed (latents as NumPy arrays, a strided view, a raw array interface, torch
    tensors; mean and std; the progress callback) and what a Decoder was made from (the weights' dict
    and arrays) keep their reference counts once the decode has returned and the Decoder is gone."""
    weights = random_weights(8, 4, seed=1)
    mean, std = (list(v) for v in random_stats(4))
    base = lat(T=2, h=5, w=6)
    latents = [base, base.astype(np.float16), base[:, :, ::2, ::2], AI(**base.__array_interface__)]
    try:
        import torch
        latents += [torch.from_numpy(base), torch.from_numpy(base).to(torch.bfloat16)]
    except ImportError:  # the suite runs without PyTorch too (its CPU parts)
        pass

    def progress(done, total):
        return True

    def use():
        dec = wv.Decoder(weights, mean=mean, std=std)
        for x in latents:
            dec.decode(x, progress=progress, tile_x=32, tile_y=32, tile_stride_x=8, tile_stride_y=8)
            dec.decode(x, mean=mean, std=std, enable_vae_tiling=False, raw=True)
        dec.plan(2, 5, 6)
        dec.close()

    use()  # caches filled once
    assert references_kept(reference_counted(weights, mean, std, latents, progress),
                           lambda: (use(), gc.collect())) == []


def test_readme_table_matches_the_cases():
    text = pathlib.Path(REPO, "README.md").read_text(encoding="utf-8")
    table = text.split("<!-- errors -->")[1].split("<!-- /errors -->")[0]
    rows = re.findall(r"^\| (.+?) \| ", table, flags=re.M)[1:]  # after the header row
    assert rows == [c[0] for c in CASES]


def test_torch_tensor_subclasses_are_read_as_tensors(small):
    torch = pytest.importorskip("torch")

    class Sub(torch.Tensor):  # defined outside torch: found by isinstance, not by its module's name
        pass

    t = torch.from_numpy(lat()).to(torch.bfloat16)
    np.testing.assert_array_equal(small.decode(t.as_subclass(Sub), raw=True), small.decode(t, raw=True))


def test_accepted_inputs(small):
    base = lat()
    ref = small.decode(base, raw=True)
    ro = base.copy()
    ro.flags.writeable = False  # read-only arrays are fine: inputs are only read
    np.testing.assert_array_equal(small.decode(ro, raw=True), ref)
    np.testing.assert_array_equal(small.decode(base.astype(np.float64), raw=True), ref)  # float64: converted
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(small.decode(torch.from_numpy(base).double(), raw=True), ref)  # torch's too
    w = random_weights(8, 4, seed=1)
    mixed = {k: (v.astype(np.float16) if i % 2 else v) for i, (k, v) in enumerate(w.items())}  # mixed dtypes
    wv.Decoder(mixed, mean=small.mean, std=small.std).decode(base)


def test_allocation_failure_mid_decode_then_recovery(small):
    base = lat()
    ref = small.decode(base, raw=True)
    wv._C._fail_nth_alloc(1)  # the arena allocation of the next decode
    with pytest.raises(MemoryError, match=r"^the decode's working memory: out of host memory allocating \d+ bytes "
                                          r"\([\d.]+ KiB\) \(injected failure\)\. Smaller tiles take less: a "
                                          r"smaller memory budget or tile size \(the frames are the same\)\.$"):
        small.decode(base, raw=True)
    wv._C._fail_nth_alloc(0)
    np.testing.assert_array_equal(small.decode(base, raw=True), ref)


def test_a_budget_error_says_where_the_budget_came_from(small, monkeypatch):
    """A budget no tiling fits: given (max_memory), the error names the least to pass; chosen by the
    decoder (a share of the memory free), it says so and how to free more; the type is kept (a GPU's
    budget: DeviceMemoryError)."""
    base = lat()
    with pytest.raises(MemoryError, match=r"\. Pass max_memory=(\d+) or more\.$") as given:
        small.decode(base, max_memory=1000)
    small.decode(base, max_memory=int(re.search(r"max_memory=(\d+)", str(given.value)).group(1)))  # fits
    monkeypatch.setattr(api, "available_host_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match=r"^the decode needs .*\. The budget is 90% of the host memory available as "
                                          r"the decode begins: close programs to free more\.$") as chosen:
        small.decode(base)
    assert "Pass max_memory" not in str(chosen.value)
    with pytest.raises(wv.DeviceMemoryError, match=r"^the decode needs 5 bytes; the least it can take is 4 bytes, "
                                                   r"untiled\. The budget is 90% of the GPU memory free as the decode "
                                                   r"begins: unload other models or close programs using the GPU"):
        with api._memory_advised(None, "cuda"):  # the message as the core gives it
            raise wv.DeviceMemoryError("the decode needs 5 bytes; the least it can take is 4 bytes, untiled")
    with pytest.raises(MemoryError, match="^out of host memory allocating 4 bytes$"):  # nothing to advise
        with api._memory_advised(None, "cpu"):
            raise MemoryError("out of host memory allocating 4 bytes")


def test_interrupt_stops_within_one_step_and_next_decode_works(small):
    base = lat(T=3, h=8, w=8)
    ref = small.decode(base, raw=True, tile_x=40, tile_y=40, tile_stride_x=32, tile_stride_y=32)
    calls = []

    def stop_at_3(done, total):
        calls.append(done)
        return done < 3

    with pytest.raises(wv.DecodeInterrupted, match="after 3 of"):
        small.decode(base, raw=True, tile_x=40, tile_y=40, tile_stride_x=32, tile_stride_y=32, progress=stop_at_3)
    assert calls == [1, 2, 3]

    def raise_keyboard_interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        small.decode(base, progress=raise_keyboard_interrupt)
    out = small.decode(base, raw=True, tile_x=40, tile_y=40, tile_stride_x=32, tile_stride_y=32)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="no interval timers (Windows)")
def test_a_signal_stops_a_decode_without_a_progress_callback(small):
    """Ctrl-C in a script that passes no callback: the core's steps still look at Python's signals
    between them, the handler's exception ends the decode, and the Decoder decodes as before after."""
    import signal
    import time
    base = lat(T=8, h=16, w=16)  # 16 steps, about a second on two cores
    ref = small.decode(base, raw=True)

    def alarm(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        start = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            small.decode(base, raw=True)
        interrupted_after = time.perf_counter() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    start = time.perf_counter()
    np.testing.assert_array_equal(small.decode(base, raw=True), ref)
    assert interrupted_after < (time.perf_counter() - start) / 2  # stopped early, not when the decode returned


def test_threads_with_separate_and_shared_decoders(small):
    inputs = [lat(T=2, h=4 + i, w=5) for i in range(4)]
    expected = [small.decode(x, raw=True) for x in inputs]
    others = [wv.Decoder(random_weights(8, 4, seed=1), mean=small.mean, std=small.std) for _ in range(2)]
    results = {}

    def run(key, dec, x):
        results[key] = dec.decode(x, raw=True)

    threads = [threading.Thread(target=run, args=(("shared", i), small, x)) for i, x in enumerate(inputs)]
    threads += [threading.Thread(target=run, args=(("own", i), others[i % 2], x)) for i, x in enumerate(inputs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, e in enumerate(expected):
        np.testing.assert_allclose(results["shared", i], e, atol=1e-6, rtol=0)
        np.testing.assert_allclose(results["own", i], e, atol=1e-6, rtol=0)


def test_repeated_decodes_do_not_grow_memory(small):
    base = lat(T=2, h=6, w=6)
    for _ in range(3):
        small.decode(base)
    before = current_rss_bytes()
    if before is None:
        pytest.skip("no /proc/self/statm")
    for _ in range(30):
        small.decode(base)
        with pytest.raises(E):
            small.decode(lat(z=5))
    assert current_rss_bytes() - before < 8 * 2**20


def test_a_model_is_built_once(small):
    m = wv._C.Model(random_weights(8, 4))
    with pytest.raises(wv.WanVAEError, match="built once"):
        m.__init__(random_weights(8, 4))
    assert m.z_dim == 4


def test_a_progress_callback_cannot_decode_with_its_own_model(small):
    calls = []

    def reenter(done, total):
        calls.append(done)
        small.decode(lat())

    with pytest.raises(wv.WanVAEError, match="already decoding in this thread"):
        small.decode(lat(), progress=reenter)
    assert calls == [1]
    assert small.decode(lat()).shape[0] == 5  # and the model still works


def test_a_closed_decoder_refuses_to_decode_but_still_plans():
    mean, std = random_stats(4)
    with wv.Decoder(random_weights(8, 4, seed=1), mean=mean, std=std) as dec:
        assert not dec.closed and dec.decode(lat()).shape[0] == 5
    assert dec.closed
    with pytest.raises(E, match="closed"):
        dec.decode(lat())
    assert dec.plan(2, 3, 4)["frames"] == 5 and dec.z_dim == 4
    dec.close()  # twice: harmless


_CLOSE_FREES = """
import wanvideo_vae as wv
from wanvideo_vae.cli import current_rss_bytes
from wanvideo_vae.random_model import random_weights
weights = random_weights(48, 16, seed=2)  # 71 MiB of weights: past glibc's largest mmap threshold (32 MiB)
dec = wv.Decoder(weights)
del weights
held = current_rss_bytes()
dec.close()  # the Decoder object stays alive; its weights go
print(held - current_rss_bytes(), dec._model.weight_bytes)
"""


def test_close_frees_the_weights_at_once(tmp_path):
    """In a fresh process: a long test run's allocator may reuse freed memory instead of mapping anew.
    It imports the package this process imported (built in place, or installed)."""
    import subprocess
    import sys
    if current_rss_bytes() is None:
        pytest.skip("no /proc/self/statm")
    run = subprocess.run([sys.executable, "-c", _CLOSE_FREES], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": package_root()}, timeout=300)
    assert run.returncode == 0, run.stderr
    freed, weight_bytes = (int(n) for n in run.stdout.split())
    assert freed >= 0.8 * weight_bytes, (freed, weight_bytes)


_EMPTIED_KEYWORDS = """
import ctypes
import numpy as np
from wanvideo_vae import _C
from wanvideo_vae.random_model import random_latents, random_weights

call = ctypes.pythonapi.PyObject_Call  # as a C caller calls: its own keyword dict handed to the method
call.restype, call.argtypes = ctypes.py_object, [ctypes.py_object] * 3
model = _C.Model(random_weights(8, 4, seed=1))
latents = random_latents(4, 2, 3, 4)
expected = model.decode(latents, [0.0] * 4, [1.0] * 4)[0]


class Emptying:
    def __init__(self, value):
        self.value = value

    def __float__(self):
        kw.clear()
        return self.value

    def __call__(self, done, total):
        kw.clear()
        self.garbage = [object() for _ in range(1000)]  # the freed memory is reused
        return True


class Interface:
    def __init__(self):
        self.array = np.array(latents)

    @property
    def __array_interface__(self):
        kw.clear()
        return self.array.__array_interface__


# each argument made afresh, held by kw alone
for name, own in [("progress", lambda: {"progress": Emptying(0)}),
                  ("mean", lambda: {"mean": [Emptying(0.0)] + [0.0] * 3}),
                  ("latents", lambda: {"latents": Interface()})]:
    kw = {"latents": latents, "mean": [0.0] * 4, "std": [1.0] * 4, **own()}
    out = call(model.decode, (), kw)[0]
    print(name, np.array_equal(out, expected), flush=True)
"""


def test_arguments_from_a_keyword_dict_emptied_during_the_call_stay_alive(tmp_path):
    """A C caller (ctypes, Cython) hands decode its own keyword dict, which Python code run during the
    call (the progress callback, a number's __float__, an array interface) may empty: the arguments
    are held for the call, not read after they are freed. In a fresh process with Python's debug
    allocator, which fills freed memory: a use after free crashes it."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-c", _EMPTIED_KEYWORDS], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": package_root(), "PYTHONMALLOC": "debug"}, timeout=300)
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr)
    assert run.stdout.split() == ["progress", "True", "mean", "True", "latents", "True"], run.stdout


def test_close_waits_for_a_decode_in_another_thread(small):
    mean, std = random_stats(4)
    dec = wv.Decoder(random_weights(8, 4, seed=1), mean=mean, std=std)
    started, results = threading.Event(), []

    def slow(done, total):
        started.set()
        threading.Event().wait(0.2)  # close() is called meanwhile
        return True

    worker = threading.Thread(target=lambda: results.append(dec.decode(lat(), progress=slow)))
    worker.start()
    assert started.wait(10)
    dec.close()
    worker.join()
    assert dec.closed and np.array_equal(results[0], small.decode(lat()))


def test_a_progress_callback_cannot_close_its_own_decoder(small):
    with pytest.raises(E, match="cannot close the Decoder it reports on"):
        small.decode(lat(), progress=lambda done, total: small.close())
    assert not small.closed and small.decode(lat()).shape[0] == 5


def test_plan_refuses_implausible_sizes(small):
    with pytest.raises(wv.WanVAEError, match="at most 100000"):
        small._model.plan(2**31 - 1, 1, 1)


def test_an_array_interface_that_raises_is_not_swallowed(small):
    class Grad:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    with pytest.raises(RuntimeError, match="requires grad"):
        small.decode(Grad())


def test_weights_dict_changing_while_read_is_read_as_it_was(small):
    weights = random_weights(8, 4)

    class Grows:  # reading this weight adds keys to the dict being read
        def __init__(self, arr):
            self.arr = arr

        @property
        def __array_interface__(self):
            for i in range(64):
                weights[f"extra.{i}"] = np.zeros(1, np.float32)
            return self.arr.__array_interface__

    weights["decoder.head.2.bias"] = Grows(weights["decoder.head.2.bias"])
    m = wv._C.Model(weights)
    assert m.z_dim == 4 and "extra.0" in weights


def test_plan_refuses_more_tiles_than_it_can_count(small):
    """The largest latent frame planned (just under 2**31 positions) in the smallest tiles is 2**31 tiles
    of a latent pixel each: over the cap of 2**20, before any memory is taken for them (at 2**32 tiles,
    when frames could be that large, a 32-bit count wrapped to 0)."""
    with pytest.raises(E, match="too many"):
        small.plan(1, 46340, 46340, tile_x=22, tile_y=22, tile_stride_x=8, tile_stride_y=8)
    cap = dict(tile_x=22, tile_y=22, max_memory=1 << 62)  # 22 px tiles: one latent pixel each
    assert small._model.plan(1, 1024, 1024, **cap)["n_tiles"] == 2**20  # the cap itself is planned
    with pytest.raises(E, match=r"1025 x 1024 tiles is too many \(at most 1048576\)"):
        small._model.plan(1, 1024, 1025, **cap)


@pytest.mark.parametrize("outer", ["builds", "fails"])
def test_a_model_is_not_built_again_while_its_weights_are_read(outer):
    """Reading a weight runs Python code, which may build the same Model: refused, and the outer build
    then stands or fails alone (before, the inner build was leaked and a failed outer one left a
    Model marked built on freed weights)."""
    m = wv._C.Model.__new__(wv._C.Model)
    weights, inner = random_weights(8, 4), []

    class Reenters:
        def __init__(self, arr):
            self.arr = arr

        @property
        def __array_interface__(self):
            try:
                m.__init__(random_weights(8, 4))
            except E as e:
                inner.append(str(e))
            return self.arr.__array_interface__

    weights["decoder.head.2.bias"] = Reenters(weights["decoder.head.2.bias"])
    if outer == "fails":
        del weights["decoder.conv1.weight"]
        with pytest.raises(E, match="decoder.conv1.weight"):
            m.__init__(weights)
        with pytest.raises(E):
            m.decode(lat(), [0.0] * 4, [1.0] * 4)
    else:
        m.__init__(weights)
        frames, _ = m.decode(lat(), [0.0] * 4, [1.0] * 4)
        assert np.isfinite(frames).all()
    assert inner and "built once" in inner[0]


def test_stats_changed_while_read_are_read_as_they_were(small):
    """A mean whose first value, read, empties the list: the values are those it held when the call
    began (before, the rest were read through freed references)."""
    mean = []

    class Empties:
        def __float__(self):
            mean.clear()
            return 0.0

    mean += [Empties(), 0.5, 0.5, 0.5]
    frames, _ = small._model.decode(lat(), mean, [1.0] * 4)
    expected, _ = small._model.decode(lat(), [0.0, 0.5, 0.5, 0.5], [1.0] * 4)
    np.testing.assert_array_equal(frames, expected)


def test_an_array_shape_replaced_while_read_is_read_as_it_was():
    """An extent's __index__ that replaces the interface's shape and strides: the tuple being read
    stays alive (before, its items were read from freed memory)."""
    buf = np.zeros(64, np.float32)

    class Replaces:
        def __init__(self, iface):
            self.iface = iface

        def __index__(self):
            self.iface["shape"] = self.iface["strides"] = None
            gc.collect()
            self.reuse = [tuple(range(4, 6)) for _ in range(100)]  # what would take the freed memory
            return 2

    for _ in range(50):
        array = AI(typestr="<f4", data=(buf.ctypes.data, False), version=3, strides=(128, 4))
        array.__array_interface__["shape"] = (Replaces(array.__array_interface__), 32)
        parsed = wv._C._parse_array(array)
        assert parsed["shape"] == (2, 32) and parsed["strides"] == (128, 4)


def test_progress_callbacks_decoding_with_each_others_decoder_do_not_wait_forever():
    """Two threads, each in a progress callback of its own Decoder, decode with the other's: each holds
    what the other waits for, so a callback does not wait for a busy Decoder; it gets an error."""
    mean, std = random_stats(4)
    x, y = (wv.Decoder(random_weights(8, 4, seed=s), mean=mean, std=std) for s in (1, 2))
    both_in_callbacks, errors = threading.Barrier(2, timeout=30), {}

    def run(own, other, name):
        def callback(done, total):
            if done == 1:
                both_in_callbacks.wait()
                other.decode(lat())

        try:
            own.decode(lat(), progress=callback)
        except Exception as e:  # noqa: BLE001 - what the thread ended with is the result
            errors[name] = e

    threads = [threading.Thread(target=run, args=args, daemon=True) for args in ((x, y, "x"), (y, x, "y"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "the two decodes wait for each other"
    assert errors and all(isinstance(e, E) and "busy in another thread" in str(e) for e in errors.values())
    assert x.decode(lat()).shape == y.decode(lat()).shape  # and both work afterwards


@pytest.mark.parametrize("pointer, message", [(-8, "data pointer -8 is not an address"),
                                              (2**64, "is not an address"),
                                              (8.0, "data pointer must be an int, not float")])
def test_data_pointer_that_is_not_an_address(pointer, message):
    """A pointer PyLong_AsVoidPtr would wrap (-8: the top of memory) or truncate is refused, before any read."""
    with pytest.raises(E, match=message):
        wv._C._parse_array(AI(shape=(4,), typestr="<f4", data=(pointer, True), version=3))


def _held_by(error):
    """What the frames an error passed through still hold, the test's own aside: (frame name, value) for each
    Decoder, array or tensor (or dict, list or tuple of them) among their locals, of the error and of those
    chained to it."""
    torch = sys.modules.get("torch")  # no tensor exists where torch was never imported
    kinds = (wv.Decoder, np.ndarray) + ((torch.Tensor,) if torch else ())
    held, pending = [], [error]
    while pending:
        e = pending.pop()
        if e is None:
            continue
        tb = e.__traceback__
        while tb is not None:
            values = [] if tb.tb_frame.f_code.co_filename == __file__ else tb.tb_frame.f_locals.values()  # the test's
            for value in values:
                items = list(value.values()) if isinstance(value, dict) else \
                    list(value) if isinstance(value, (list, tuple)) else [value]
                held += [(tb.tb_frame.f_code.co_name, v) for v in items
                         if isinstance(v, kinds) or hasattr(v, "__array_interface__")]
            tb = tb.tb_next
        pending += [e.__cause__, e.__context__]
    return held


def _recording_models(monkeypatch):
    """The list of every _C.Model the package makes from now on."""
    made, real = [], wv._C.Model

    def model(*args):
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(wv._C, "Model", model)
    return made


def test_decode_tiled_keeps_neither_decoder_nor_arrays_on_an_error(monkeypatch):
    """The one-shot call's Decoder is closed even when the decode raises, and the traceback a caller keeps (a
    UI showing the error) holds none of it: not its weights (on CUDA device and pinned memory too), not the
    latents."""
    mean, std = random_stats(4)
    made = _recording_models(monkeypatch)
    with pytest.raises(wv.DecodeInterrupted) as info:
        wv.decode_tiled(random_weights(8, 4), lat(), mean=mean, std=std, progress=lambda done, total: False)
    assert len(made) == 1 and made[0].closed
    assert _held_by(info.value) == []


def test_numpy_integers_are_ints(small):
    """Sizes computed with NumPy (np.int64) are taken like Python ints."""
    ref = small.decode(lat(), raw=True, tile_x=40, tile_y=40, tile_stride_x=8, tile_stride_y=8)
    out = small.decode(lat(), raw=True, tile_x=np.int64(40), tile_y=np.int32(40), tile_stride_x=np.int64(8),
                       tile_stride_y=np.int64(8), max_memory=np.int64(1 << 30))
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(E, match="positive int"):
        small.decode(lat(), tile_x=np.True_)


# ---- edge cases of the boundary: each fails on the code before its fix --------------------------

def test_a_tensor_with_its_negation_pending_decodes_with_its_sign(small):
    torch = pytest.importorskip("torch")
    values = torch.from_numpy(lat())
    pending = (values.to(torch.complex64) * 1j).conj().imag  # -values, stored as +values with the neg bit
    assert pending.is_neg()
    np.testing.assert_array_equal(small.decode(pending, raw=True), small.decode((-values).numpy(), raw=True))


def test_sparse_and_meta_tensors_are_refused(small):
    torch = pytest.importorskip("torch")
    with pytest.raises(E, match="sparse_coo tensor on cpu holds no dense data"):
        small.decode(torch.from_numpy(lat()).to_sparse())
    with pytest.raises(E, match="tensor on meta holds no dense data"):
        small.decode(torch.empty(4, 2, 3, 4, device="meta"))


def test_statistics_beyond_float32_are_refused(small):
    with pytest.raises(E, match="std has a value beyond float32's range"):
        small.decode(lat(), std=[1e39] * 4)
    with pytest.raises(E, match=r"^std\[0\] = 1e\+39 is not a finite float32 value$"):  # the module, directly
        small._model.decode(lat(), small.mean, [1e39] * 4)
    with pytest.raises(E, match=r"^mean\[2\] = nan is not a finite float32 value$"):
        small._model.decode(lat(), [0.0, 0.0, float("nan"), 0.0], small.std)


def test_a_progress_callback_returning_numpys_false_stops_the_decode(small):
    with pytest.raises(wv.DecodeInterrupted, match="after 1 of"):
        small.decode(lat(T=3, h=8, w=8), tile_x=40, tile_y=40, tile_stride_x=32, tile_stride_y=32,
                     progress=lambda done, total: np.int64(done) < 1)


@pytest.mark.parametrize("call,pattern", [
    (lambda d: d.decode(lat(), tile_x=2**31), r"tile_x must be a positive int \(below 2\*\*31\)"),
    (lambda d: d.plan(2**31, 4, 4), r"T must be a positive int \(below 2\*\*31\)"),
    (lambda d: d.plan(2, 4.0, 4), r"h must be a positive int"),
    (lambda d: wv.Decoder({1: np.zeros(3, np.float32)}), "weight names must be str"),
    (lambda d: wv._C._parse_array(CAI(shape=(1,), typestr="<f4", data=(8, False), version=3, stream="s")),
     "array interface 'stream' holds 's', not a 64-bit int"),
    (lambda d: wv._C._parse_array(AI(shape=(2.5,), typestr="<f4", data=(8, False), version=3)),
     "array interface 'shape' holds 2.5, not a 64-bit int"),
    (lambda d: wv._C._parse_array(AI(shape=(1,), typestr="<f4", data=(8, False), strides=(2**70,), version=3)),
     "array interface 'strides' holds 1180591620717411303424, not a 64-bit int"),
    (lambda d: d.decode(np.ma.masked_array(lat(), mask=lat() > 0)), "masked arrays are not supported"),
    (lambda d: wv._C._parse_array(AI(shape=(4,), typestr="<f4", data=(8, False), mask=np.zeros(4, bool), version=3)),
     "masked arrays are not supported"),  # an interface's own mask (NumPy's masked arrays have none)
    (lambda d: wv._C._parse_array(AI(shape=(4,), typestr="<f4", data=(8, False), strides=(6,), version=3)),
     "stride 6 on axis 0 is not a multiple of the element size"),
    (lambda d: d._model.plan(1, 2, 3, tile_x=-5), r"tile sizes must be >= 0 \(0 = whole frame\), got tile_x=-5"),
    (lambda d: wv._C._parse_array(AI(shape=(2, -1), typestr="<f4", data=(8, False), version=3)),
     "negative extent -1 on axis 1"),
    (lambda d: d.decode(AI(shape=(4, 0, 3, 3), typestr="<f4", data=(0, False), version=3)),  # torch's empty tensors
     r"T, h, w >= 1"),
])
def test_bad_values_get_the_librarys_error(small, call, pattern):
    with pytest.raises(E, match=pattern):
        call(small)


def test_an_interrupt_while_reading_the_array_interface_is_not_swallowed():
    class Interrupted:
        @property
        def __array_interface__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wv._C._parse_array(Interrupted())


def test_big_endian_bfloat16_bits_read_as_their_values():
    from wanvideo_vae.weights import bf16_to_float32
    bits = np.array([0x3F80, 0xC000], dtype=">u2")  # 1.0, -2.0
    np.testing.assert_array_equal(bf16_to_float32(bits), np.array([1.0, -2.0], np.float32))
    np.testing.assert_array_equal(bf16_to_float32(bits.astype("<u2")), np.array([1.0, -2.0], np.float32))


def test_a_stream_whose_index_takes_it_out_of_the_interface_is_read_safely():
    """A CAI stream whose __index__ deletes it from the dict and returns no int: the error names it,
    alive (before, the message formatted the freed object, whose finalizer had run)."""
    for _ in range(50):
        array = CAI(shape=(4,), typestr="<f4", data=(1 << 40, False), version=3)
        iface = array.__cuda_array_interface__  # the dict the parser reads
        finalized = []

        class Leaves:
            def __index__(self):
                del iface["stream"]
                return "no int"

            def __repr__(self):
                return "a stream after its end" if finalized else "a live stream"

            def __del__(self):
                finalized.append(True)

        iface["stream"] = Leaves()
        with pytest.raises(E, match="a live stream"):
            wv._C._parse_array(array)
        assert finalized  # once the call let go of it


class _KeyLike:
    """A dict key that compares as `name` does (same hash), running `on_compare` when it is compared."""

    def __init__(self, name, on_compare):
        self.name, self.on_compare = name, on_compare

    def __hash__(self):
        return hash(self.name)

    def __eq__(self, other):
        self.on_compare()
        return False


def test_an_interface_item_dropped_by_a_later_lookup_is_read_alive():
    """Looking up 'mask' compares the dict's keys, which runs Python code; one that deletes 'typestr'
    drops the dict's reference to it: the parser holds its own (before, it read a freed string, which a
    debug allocator crashed on, and a normal one named garbage)."""
    class Typestr(str):
        def __del__(self):
            ended.append(True)

    for _ in range(20):
        ended = []
        iface = {"shape": (4,), "typestr": Typestr("<f4"), "data": (1 << 40, False), "version": 3}

        def drop_typestr():
            if "typestr" in iface:
                del iface["typestr"]
                [str(i) * 3 for i in range(1000)]  # reuse the freed memory

        iface[_KeyLike("mask", drop_typestr)] = None
        array = AI()
        array.__array_interface__ = iface
        assert wv._C._parse_array(array)["dtype"] == "float32" and ended  # read as it was, then let go of


def test_a_lookup_that_raises_is_not_swallowed():
    """A key's comparison that raises (Ctrl-C while reading the interface) reaches the caller, not
    "no 'shape'"."""
    armed = []

    def interrupt():
        if armed:
            raise KeyboardInterrupt

    for name in ("shape", "typestr", "mask", "data", "strides", "descr", "stream"):
        armed.clear()
        iface = {_KeyLike(name, interrupt): None}  # met first by a lookup of `name`
        iface.update(shape=(4,), typestr="<V2" if name == "descr" else "<f4", data=(1 << 40, False), version=3)
        array = CAI() if name == "stream" else AI()
        setattr(array, "__cuda_array_interface__" if name == "stream" else "__array_interface__", iface)
        armed.append(True)
        with pytest.raises(KeyboardInterrupt):
            wv._C._parse_array(array)


def test_a_model_is_not_built_again_while_its_backend_is_found():
    """Finding the CUDA backend imports wanvideo_vae._cuda: Python code (an import hook), which may build
    the same Model: refused, and the outer build then stands or fails alone (before, the inner build
    was leaked and the Model left marked built without a backend context: a crash at decode)."""
    import builtins
    m = wv._C.Model.__new__(wv._C.Model)
    weights, inner, real_import = random_weights(8, 4), [], builtins.__import__

    def hook(name, *args, **kwargs):
        if name == "wanvideo_vae._cuda" and not inner:
            try:
                m.__init__(weights)
            except E as e:
                inner.append(str(e))
        return real_import(name, *args, **kwargs)

    builtins.__import__ = hook
    try:
        with contextlib.suppress(E):  # without a usable GPU; with one, the outer build stands
            m.__init__(weights, "cuda", "fp32")
    finally:
        builtins.__import__ = real_import
    assert inner and "built once" in inner[0]
    try:
        frames, _ = m.decode(lat(), [0.0] * 4, [1.0] * 4)
    except E as e:
        assert "not initialised" in str(e)
    else:
        assert np.isfinite(frames).all()


def test_stats_iterables_that_fail_keep_their_own_error(small):
    """Only a mean that is no sequence becomes our error; an iterable's own exception, Ctrl-C
    included, reaches the caller as it was."""

    def interrupted():
        yield 0.0
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        small._model.decode(lat(), interrupted(), [1.0] * 4)
    with pytest.raises(E, match="mean must be a sequence of 4 floats"):
        small._model.decode(lat(), 3, [1.0] * 4)


def test_a_weight_name_that_is_no_valid_unicode_is_named():
    weights = random_weights(8, 4)
    weights["decoder.conv1.weight\udc80"] = weights.pop("decoder.conv1.weight")
    with pytest.raises(E, match="is not valid Unicode text"):
        wv._C.Model(weights)
    with pytest.raises(E, match="every key must be a str, got int"):
        wv._C.Model({1: np.zeros(3, np.float32)})


def test_a_weight_name_holding_a_nul_is_refused():
    """The core compares keys as C strings: "decoder.head.2.bias\\0junk" was read as decoder.head.2.bias
    (used in its place, or 'given twice' beside it). A safetensors header can hold such a name."""
    weights = random_weights(8, 4)
    weights["decoder.head.2.bias\0junk"] = weights.pop("decoder.head.2.bias")
    with pytest.raises(E, match=r"key 'decoder.head.2.bias\\x00junk' holds a NUL character"):
        wv._C.Model(weights)
    weights["decoder.head.2.bias"] = weights["decoder.head.2.bias\0junk"]
    with pytest.raises(E, match="holds a NUL character"):
        wv.Decoder(weights)


def test_expected_keys_takes_the_widths_a_model_takes():
    """expected_keys listed keys for dim up to 4096, which a model of those weights then refused
    (its widest layer, 4 dim, is at most 4096)."""
    assert len(wv._C.expected_keys(1024, 4096)) == len(wv._C.expected_keys(96, 16))
    with pytest.raises(E, match=r"dim must be in 1\.\.1024 and z_dim in 1\.\.4096"):
        wv._C.expected_keys(1025, 16)
    conv1 = {"decoder.conv1.weight": np.zeros((4100, 16, 3, 3, 3), np.float32)}  # a view: no data read
    with pytest.raises(E, match="expected \\(4\\*dim, z_dim, 3, 3, 3\\)"):
        wv._C.Model(conv1)


def test_a_decoder_refused_for_its_stats_keeps_no_weights(monkeypatch):
    """Stats are checked after the weights are converted: a refused Decoder closes its model, and the error's
    traceback holds neither it nor the weights (device memory, on CUDA)."""
    made = _recording_models(monkeypatch)
    with pytest.raises(E, match="mean has 3 values") as info:
        wv.Decoder(random_weights(8, 4), mean=[0.0] * 3, std=[1.0] * 4)
    assert len(made) == 1 and made[0].closed
    assert _held_by(info.value) == []


def test_inputs_past_float_range_or_of_the_wrong_type_are_our_errors(tmp_path):
    with pytest.raises(E, match="mean must be a sequence of numbers"):
        wv.Decoder(random_weights(8, 4), mean=[10**400] * 4, std=[1.0] * 4)
    with pytest.raises(E, match="precision must be"):
        wv.Decoder(random_weights(8, 4), precision=32)
    for name, header in (("huge", {"x": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}),
                         ("deep", "[" * 100000 + "]" * 100000)):
        raw = (header if isinstance(header, str) else json.dumps(header)).encode()
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 8)
        with pytest.raises(E):
            wv.load_weights(str(path))


def child_exit_code(pid, hang_message):
    """A forked child's exit code, waited for 30 s at most: a hang kills it and fails the test rather
    than the run."""
    for _ in range(300):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        __import__("time").sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(hang_message)


def exit_child_after(action, done, forked):
    """In a forked child: exits with `done` where action() returns, `forked` where it raises the
    WanVAEError saying the Decoder was busy at the fork, 8 for another WanVAEError, 9 for anything else."""
    try:
        action()
        code = done
    except wv.WanVAEError as e:
        code = forked if "forked" in str(e) else 8
    except BaseException:  # noqa: BLE001
        code = 9
    os._exit(code)


def fork_while_a_thread_is_in_a_progress_callback(dec, in_child, hang_message):
    """Forks while another thread decodes with `dec` and waits in its progress callback; the child runs
    in_child(that thread's ident), which exits. The child's exit code, that thread's decode done."""
    in_callback, release, idents = threading.Event(), threading.Event(), []

    def hold(done, total):
        idents.append(threading.get_ident())
        in_callback.set()
        release.wait(30)
        return True

    worker = threading.Thread(target=lambda: dec.decode(lat(), progress=hold))
    worker.start()
    try:
        assert in_callback.wait(30)
        pid = os.fork()
        if pid == 0:
            in_child(idents[0])
        return child_exit_code(pid, hang_message)
    finally:
        release.set()
        worker.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_decoder_busy_when_the_process_forks_is_an_error_in_the_child(small):
    """The decode of another thread does not exist in a forked child: the Decoder's lock would never be
    let go there, and waiting for it would hang the child."""
    # the child: exit status 0 only for the error saying so
    code = fork_while_a_thread_is_in_a_progress_callback(
        small, lambda ident: exit_child_after(lambda: small.decode(lat()), done=3, forked=0),
        "the child hung on the Decoder its parent's thread was using")
    assert code == 0
    np.testing.assert_array_equal(small.decode(lat()), small.decode(lat()))  # the parent's Decoder still works


def exit_child_after_waiting_as(ident):
    """In a forked child: a thread made there with `ident` (threads are made until one gets it) asks
    for a Decoder while the child's main thread decodes with it. Exits 0 where it waited its turn and
    decoded, 5 where it was refused as a thread inside a progress callback, 77 where no thread got the
    ident, 8 for another WanVAEError, 9 for anything else."""
    import time
    code = 9
    try:
        dec = wv.Decoder(random_weights(8, 4, seed=3), mean=[0.0] * 4, std=[1.0] * 4)
        tiny_lat = random_latents(4, 2, 2, 2)
        go, codes = threading.Event(), []

        def park():
            go.wait(30)
            if threading.get_ident() != ident:
                return
            try:
                dec.decode(tiny_lat)
                codes.append(0)
            except wv.WanVAEError as e:
                codes.append(5 if "callback" in str(e) else 8)

        def let_it_ask(done, total):
            if done == 1:
                go.set()
                time.sleep(1.0)  # busy here, while the thread asks
            return True

        parked = []
        while len(parked) < 16 and ident not in [t.ident for t in parked]:
            parked.append(threading.Thread(target=park))  # each kept: a joined one's descriptor comes back next
            parked[-1].start()
        if ident in [t.ident for t in parked]:
            dec.decode(tiny_lat, progress=let_it_ask)
        go.set()
        for t in parked:
            t.join(30)
        code = codes[0] if codes else 77
    finally:
        os._exit(code)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_thread_of_a_forked_child_waits_for_a_busy_decoder_whatever_its_parent_was_doing(small):
    """A thread of the parent inside a progress callback as the process forks is not in the child, and
    its callback never ends there. A thread the child makes may get its ident (the C library reuses
    the thread's descriptor) and must still wait its turn for a Decoder another thread of the child is
    decoding with, not be refused as a callback that cannot wait (it was, for the child's life)."""
    code = fork_while_a_thread_is_in_a_progress_callback(small, exit_child_after_waiting_as,
                                                         "the child's decodes hung")
    if code == 77:
        pytest.skip("no thread of the child got the ident of the parent's thread (this C library does not reuse it)")
    assert code == 0, "the child's thread was refused (5) or failed otherwise (8, 9)"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_as_a_thread_takes_or_lets_go_of_the_decoder_does_not_hang():
    """A thread of the parent may hold the Decoder's lock outside a decode as the process forks (it has
    taken it and waits for the GIL to mark the decode, or has unmarked it and not yet let go): the child
    takes a lock of its own rather than wait for one nobody there lets go. Each child closes the Decoder,
    or is told a decode was running, within 3 s (it used to hang in about one fork in three)."""
    import signal
    import threading
    dec = wv.Decoder(random_weights(8, 4, seed=2), mean=[0.0] * 4, std=[1.0] * 4)
    tiny_lat = random_latents(4, 1, 2, 2)
    stop = threading.Event()

    def decode_until_stopped():
        while not stop.is_set():
            dec.decode(tiny_lat)

    workers = [threading.Thread(target=decode_until_stopped) for _ in range(2)]
    for w in workers:
        w.start()
    codes = []
    try:
        for _ in range(40):
            sum(range(20000))  # the GIL held a while, then a fork: the workers are anywhere
            pid = os.fork()
            if pid == 0:
                signal.alarm(3)
                exit_child_after(dec.close, done=0, forked=1)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            if codes[-1] not in (0, 1):
                break
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert all(c in (0, 1) for c in codes), f"children's exit codes (-{int(signal.SIGALRM)}: hung): {codes}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_decode_forked_from_its_progress_callback_ends_well_in_both_processes():
    """The child of a fork made inside a CPU decode (from its progress callback) goes on with the
    decode without the threads it had split its work over: the work runs in its one thread, and the
    call ends there as in the parent, instead of waiting to join threads that are not there."""
    mean, std = random_stats(4)
    dec = wv.Decoder(random_weights(8, 4, seed=1), mean=mean, std=std)
    expected = dec.decode(lat())
    forked = []

    def fork_once(done, total):
        if not forked:
            forked.append(os.fork())
        return True

    try:
        out = dec.decode(lat(), progress=fork_once)
    except BaseException:  # noqa: BLE001
        if forked == [0]:
            os._exit(5)
        raise
    if forked == [0]:  # the child, its decode done: exit status 0 for the same frames
        os._exit(0 if np.allclose(out, expected, rtol=0, atol=1e-5) else 6)
    assert child_exit_code(forked[0], "the child's decode hung after the fork") == 0
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1025", "3 "])
def test_cpu_threads_from_the_environment_are_checked(monkeypatch, value):
    monkeypatch.setenv("WANVIDEO_CPU_THREADS", value)
    with pytest.raises(wv.WanVAEError, match="WANVIDEO_CPU_THREADS must be a whole number from 1 to 1024"):
        wv.Decoder(random_weights(8, 4, seed=1))
    cpu = wv.backends()["cpu"]
    assert not cpu["usable"] and cpu["threads"] == 0 and f"got '{value}'" in cpu["reason"]


def test_a_message_cut_inside_a_character_is_still_a_wanvae_error(monkeypatch):
    """The core's messages are cut at a byte count (a long key name, a setting shown to 40 bytes), which
    may fall inside a UTF-8 character: still the documented error, the cut character replaced."""
    w = random_weights(8, 4, seed=1)
    for key in ("x" + "\u00e9" * 300, "\u00e9" * 300):  # each parity of the cut
        with pytest.raises(wv.WanVAEError, match="unexpected weight"):
            wv._C.Model({**w, key: w["decoder.head.2.bias"]})
    monkeypatch.setenv("WANVIDEO_CPU_THREADS", "x" + "\u00e9" * 30)
    with pytest.raises(wv.WanVAEError, match="WANVIDEO_CPU_THREADS must be a whole number"):
        wv.Decoder(w)
    cpu = wv.backends()["cpu"]
    assert not cpu["usable"] and "got 'x\u00e9\u00e9" in cpu["reason"]


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_torch_tensors_without_readable_memory_are_refused_clearly(small):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(lat())
    with pytest.raises(wv.WanVAEError, match="nested tensor"):
        small.decode(torch.nested.nested_tensor([t[0], t[1]]))
    with pytest.raises(wv.WanVAEError, match="meta holds no dense data"):
        small.decode(lat(), mean=torch.zeros(4, device="meta"))
    with pytest.raises(wv.WanVAEError, match="real numbers"):
        small.decode(lat(), mean=torch.ones(4, dtype=torch.complex64))
    with pytest.raises(wv.WanVAEError, match="real numbers, got complex ones"):  # NumPy refuses its conjugate bit
        small.decode(lat(), mean=torch.ones(4, dtype=torch.complex64).conj())

    def decode_inside(x):  # torch.func's wrapper tensors have no memory of their own
        small.decode(x)
        return x.sum()

    with pytest.raises(wv.WanVAEError, match="torch does not hand out this tensor's memory"):
        torch.func.grad(decode_inside)(t.clone())


def test_raw_array_interfaces_with_odd_shapes_reach_the_core_checks(small):
    with pytest.raises(wv.WanVAEError, match="shape"):
        small.decode(AI(shape=None, typestr="<f4", data=(8, True), version=3))
    with pytest.raises(wv.WanVAEError, match="4-d"):  # 5-d without indexing: not taken apart here
        small.decode(AI(shape=(1, 4, 2, 3, 3), typestr="<f4", data=(8, True), version=3))


def test_mean_and_std_are_checked_when_set(small):
    dec = wv.Decoder(random_weights(8, 4, seed=1), mean=small.mean, std=small.std)
    with pytest.raises(wv.WanVAEError, match="sequence of numbers"):
        dec.mean = "abcd"
    with pytest.raises(wv.WanVAEError, match="z_dim=4"):
        dec.std = [1.0] * 3
    dec.mean = np.zeros(4)
    assert dec.mean == [0.0] * 4
    np.testing.assert_array_equal(dec.decode(lat()), small.decode(lat(), mean=[0.0] * 4))


def test_bf16_to_float32_takes_bfloat16_bits_only():
    from wanvideo_vae.weights import bf16_to_float32
    for wrong in (np.ones(3, np.float32), np.ones(3, np.float16), np.ones(4, np.uint8)):
        with pytest.raises(wv.WanVAEError, match="raw bfloat16 items"):
            bf16_to_float32(wrong)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(bf16_to_float32(torch.tensor([1.0, -2.5], dtype=torch.bfloat16)),
                                  np.array([1.0, -2.5], np.float32))


def test_a_float_field_of_a_packed_record_array_decodes(small):
    """Its strides are not multiples of its items' size (the core reads aligned items): it is copied."""
    rec = np.zeros(lat().shape, [("lat", "<f4"), ("flag", "u1")])
    rec["lat"] = lat()
    np.testing.assert_array_equal(small.decode(rec["lat"]), small.decode(lat()))


def test_a_bfloat16_field_of_a_packed_record_array_decodes_as_the_same_values_packed(small):
    """bfloat16 as raw "V2" items, unaligned in a record: copied too, as the float fields are."""
    bits = (lat().view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 by truncation
    rec = np.zeros(lat().shape, [("flag", "u1"), ("lat", "V2")])
    rec["lat"] = bits.view("V2")
    np.testing.assert_array_equal(small.decode(rec["lat"]), small.decode(bits.view("V2")))


def test_reversed_numpy_views_decode_as_their_values(small):
    """Negative strides (np.flip, x[::-1]) are copied, as unaligned ones are: the core takes none."""
    reversed_twice = np.flip(np.flip(lat(), 2).copy(), 2)
    assert reversed_twice.strides[2] < 0
    np.testing.assert_array_equal(small.decode(reversed_twice), small.decode(lat()))
    weights = random_weights(8, 4, seed=1)
    key = "decoder.conv1.weight"
    weights[key] = np.flip(weights[key][::-1].copy(), 0)
    mean, std = random_stats(4)
    np.testing.assert_array_equal(wv.Decoder(weights, mean=mean, std=std).decode(lat()), small.decode(lat()))


@pytest.mark.parametrize("values", [[[1.0, 2.0], [3.0]], [0.0, 0.0, 0.0, [0.0]]])
def test_ragged_mean_or_std_is_our_error(small, values):
    with pytest.raises(E, match="mean must be a sequence of numbers, got a list holding sequences"):
        small.decode(lat(), mean=values)
    with pytest.raises(E, match="std must be a sequence of numbers"):
        wv.Decoder(random_weights(8, 4), mean=[0.0] * 4, std=values)


def test_devices_as_users_write_them():
    from wanvideo_vae.devices import device_index
    assert device_index(np.int64(1)) == 1 and device_index(None) == -1 and device_index("cuda:2") == 2
    assert device_index("cuda") == -1  # the string (str.index is no device index)
    try:
        import torch
    except ImportError:  # the Windows run without PyTorch's wheel
        torch = None
    if torch is not None:
        assert device_index(torch.device("cuda")) == -1 and device_index(torch.device("cuda", 3)) == 3
    for wrong in (-2, 2**31, "cuda:99999999999999999999", True):
        with pytest.raises(wv.WanVAEError):
            device_index(wrong)
    for cpu in ("cpu", "CPU", "cpu:0"):
        wv.Decoder(random_weights(8, 4), device=cpu, mean=[0.0] * 4, std=[1.0] * 4)


def test_safetensors_data_offsets_not_matching_the_shape_are_refused(tmp_path):
    from wanvideo_vae.weights import load_safetensors
    raw = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}).encode()
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(12))
    with pytest.raises(E, match="not matching its shape"):
        load_safetensors(str(tmp_path / "x.safetensors"))


def test_a_lightning_checkpoint_state_dict_is_unwrapped(tmp_path):
    torch = pytest.importorskip("torch")
    import wanvideo_vae as wv
    w = random_weights(8, 4, seed=2)
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in w.items()}, "epoch": 3}, tmp_path / "v.ckpt")
    assert set(wv.load_weights(tmp_path / "v.ckpt")) == set(w)


def test_an_explicit_device_0_is_not_the_current_device(monkeypatch):
    from wanvideo_vae import devices
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True, current_device=lambda: 1))
    monkeypatch.setattr(devices, "_torch_if_loaded", lambda: fake)
    assert devices.resolve_device(0) == 0 and devices.resolve_device(-1) == 1


def on_torchs_default_stream(monkeypatch):
    """torch, its current stream the default one: CPU tensors stand in for CUDA ones in CudaArray (the
    interface is built the same way)."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=0))
    return torch


def test_cuda_array_strides_are_in_bytes(monkeypatch):
    torch = on_torchs_default_stream(monkeypatch)
    from wanvideo_vae.devices import CudaArray
    t = torch.zeros(2, 3, 4)[:, :, ::2]  # a CPU tensor stands in: the interface is built the same way
    cai = CudaArray(t, "latents").__cuda_array_interface__
    assert cai["strides"] == (48, 16, 8)
    assert cai["stream"] == 1  # torch's default (legacy) stream: the interface forbids 0 and says 1
    cai = CudaArray(torch.zeros(2, 3, dtype=torch.float64), "latents").__cuda_array_interface__
    assert (cai["typestr"], cai["strides"]) == ("<f4", (12, 4))  # float64 converted, as on the host


def test_cuda_array_typestrs_are_the_cores_and_a_batch_of_one_is_its_video(monkeypatch):
    """bfloat16 has no standard typestr: the core reads "<V2" as bfloat16 ("<f2" would read its bits as
    float16's); [1, z, T, h, w] CUDA latents are indexed to the video [z, T, h, w], as host ones are."""
    torch = on_torchs_default_stream(monkeypatch)
    from wanvideo_vae.arrays import latents_4d
    from wanvideo_vae.devices import CudaArray
    for dtype, typestr in ((torch.float32, "<f4"), (torch.float16, "<f2"), (torch.bfloat16, "<V2")):
        assert CudaArray(torch.zeros(2, 3, dtype=dtype), "latents").__cuda_array_interface__["typestr"] == typestr
    lat = latents_4d(CudaArray(torch.zeros(1, 4, 2, 3, 5), "latents"))
    assert lat.shape == lat.__cuda_array_interface__["shape"] == (4, 2, 3, 5)


def test_a_safetensors_header_one_byte_past_the_end_is_refused(tmp_path):
    """A header that would run one byte past the file (7 bytes said, 6 there after the length)."""
    from wanvideo_vae.weights import safetensors_names
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 7) + b'{"a":1}'[:6])
    with pytest.raises(wv.WanVAEError, match=r"short\.safetensors: truncated: its header runs to byte 15 but the "
                                             r"file has 14 bytes"):
        safetensors_names(str(path))
    path.write_bytes(struct.pack("<Q", 2) + b"{}")  # exactly to the end: an empty file of tensors
    assert safetensors_names(str(path)) == []


def test_float64_safetensors_load_as_float32(tmp_path):
    from wanvideo_vae.weights import load_safetensors
    values = np.array([0.1, -2.5, 1e-3], np.float64)
    header = json.dumps({"decoder.head.2.bias": {"dtype": "F64", "shape": [3], "data_offsets": [0, 24]}}).encode()
    path = tmp_path / "f64.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + values.tobytes())
    loaded = load_safetensors(str(path))["decoder.head.2.bias"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, values.astype(np.float32))


@pytest.mark.parametrize("key,expected", [
    ("model.decoder.head.2.bias", "decoder.head.2.bias"),
    ("decoder.head.model.weight", "decoder.head.model.weight"),  # 'model.' only as the prefix
    ("model.model.decoder.x", None),  # one prefix taken, not every one
    ("encoder.model.conv1.weight", None),
])
def test_only_a_leading_model_prefix_is_taken_off(key, expected):
    from wanvideo_vae.weights import decoder_key
    assert decoder_key(key) == expected


def test_safetensors_offsets_before_the_data_are_refused(tmp_path):
    """A negative data offset would read the header's bytes as a weight's."""
    from wanvideo_vae.weights import load_safetensors
    header = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [-4, 4]}}).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(wv.WanVAEError, match="out of range"):
        load_safetensors(str(path))


@pytest.mark.parametrize("case", ["nan weight", "two keys for one weight", "latents of another z_dim",
                                  "latents file of another z_dim"])
def test_an_error_after_a_file_is_mapped_keeps_no_map_of_it(tmp_path, case):
    """A REPL or a notebook keeps the last error, and with it the frames it passed through: none of the
    package's holds an array (a view of the mapped checkpoint or latents file: Windows keeps a mapped
    file locked, so it could not be replaced) or a Decoder."""
    weights = random_weights(8, 4)
    mean, std = random_stats(4)
    if case == "nan weight":
        weights["decoder.head.2.bias"] = np.array([0.0, np.nan, 0.0], np.float32)
    if case == "two keys for one weight":
        weights["model.decoder.head.2.bias"] = weights["decoder.head.2.bias"]
    path = tmp_path / "vae.safetensors"
    write_safetensors(path, weights)
    latents = tmp_path / "latents.safetensors"
    write_safetensors(latents, {"samples": lat(z=5)})
    from wanvideo_vae.media import load_latents
    with pytest.raises(E) as info:
        if case == "latents file of another z_dim":
            wv.decode_tiled(weights, load_latents(str(latents)), mean=mean, std=std)
        else:
            wv.decode_tiled(wv.load_weights(str(path)), lat(z=5), mean=mean, std=std)
    assert _held_by(info.value) == []
    os.replace(latents, path)  # on Windows: fails while either is mapped


@pytest.mark.parametrize("case", ["truncated npy", "pt without latents"])
def test_a_latents_file_that_fails_to_load_is_not_held_by_the_error(tmp_path, case):
    """load_latents' own errors: what NumPy read of a truncated .npy (in the context its message suppresses),
    or the tensors of a .pt file without latents, go with the call."""
    torch = pytest.importorskip("torch")
    from wanvideo_vae.media import load_latents
    path = tmp_path / ("x.npy" if case == "truncated npy" else "x.pt")
    if case == "truncated npy":
        np.save(path, np.ones((4, 64, 64, 16), np.float32))
        path.write_bytes(path.read_bytes()[:-16])
    else:
        torch.save({"a": torch.ones(64, 64), "b": torch.ones(64, 64)}, path)
    with pytest.raises(E) as info:
        load_latents(str(path))
    assert _held_by(info.value) == []
    os.remove(path)  # on Windows: fails while it is mapped or open


def test_an_error_the_caller_was_handling_keeps_its_locals(tmp_path, monkeypatch):
    """Only the call's own error is cleared: one the caller was handling when it called keeps its frames;
    and WANVIDEO_KEEP_ERROR_LOCALS=1 keeps the call's too (a debugger's post-mortem)."""
    missing = str(tmp_path / "missing.safetensors")
    try:
        api.normalize_frames(np.ones(3), "nope")  # not one the clearing covers: its frame holds the array
    except E as handled:
        with pytest.raises(E) as info:
            wv.load_weights(missing)
        assert info.value.__context__ is handled
        assert [name for name, _ in _held_by(handled)] == ["normalize_frames"]
    monkeypatch.setenv("WANVIDEO_KEEP_ERROR_LOCALS", "1")
    with pytest.raises(wv.DecodeInterrupted) as info:
        wv.decode_tiled(random_weights(8, 4), lat(), mean=[0.0] * 4, std=[1.0] * 4, progress=lambda d, t: False)
    assert "decode_tiled" in [name for name, _ in _held_by(info.value)]


def test_a_safetensors_error_keeps_no_map_of_the_file(tmp_path):
    """A readable tensor before a malformed one: the error, kept with its traceback (as a host's log or
    a notebook keeps it), holds no memory map, which on Windows would keep the file locked."""
    from wanvideo_vae.weights import load_safetensors
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 12]}}).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
    with pytest.raises(wv.WanVAEError, match="'b' has data offsets") as caught:
        load_safetensors(str(path))
    tb = caught.value.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            arrays = value.values() if isinstance(value, dict) else [value]
            assert not any(isinstance(a, np.ndarray) and (isinstance(a, np.memmap) or isinstance(a.base, np.memmap))
                           for a in arrays), tb.tb_frame.f_code.co_name
        tb = tb.tb_next


@pytest.mark.parametrize("order", ["C", "F"])
def test_nan_or_inf_is_named_at_its_first_index(small, order):
    """The first non-finite element in index order (latents: [z, T, h, w]; a weight: its shape), whatever
    the array's memory order."""
    bad = np.asarray(lat(T=2, h=3, w=4), order=order)
    bad[1, 0, 1, 2], bad[2, 1, 0, 0], bad[0, 1, 2, 3] = np.inf, np.nan, np.nan  # the first of three
    with pytest.raises(E, match=r"latents contain NaN or Inf \(first at \[0, 1, 2, 3\]\)"):
        small.decode(bad)
    bad[0, 1, 2, 3] = 0
    with pytest.raises(E, match=r"\(first at \[1, 0, 1, 2\]\)"):
        small.decode(bad)
    w = random_weights(8, 4)
    key = "decoder.middle.0.residual.2.weight"  # (32, 32, 3, 3, 3)
    w[key] = np.asarray(w[key], order=order)
    w[key][3, 1, 0, 2, 1] = w[key][5, 0, 0, 0, 0] = -np.inf
    with pytest.raises(E, match=rf"weight '{key}' contains NaN or Inf \(first at \(3, 1, 0, 2, 1\)\)"):
        wv.Decoder(w)


class NotADictInterface:
    __array_interface__ = [1, 2]


@pytest.mark.parametrize("call,pattern", [
    (lambda m: wv._C._parse_array("x"), r"array: expected an array \(NumPy array or an object with"),
    (lambda m: wv._C._parse_array(NotADictInterface()), "array interface is not a dict"),
    (lambda m: wv._C._parse_array(AI(shape=(1,) * 40, typestr="<f4", data=(8, False), version=3)),
     "40 dimensions is too many"),
    (lambda m: m.decode(lat(), *random_stats(4), max_memory=-1), r"max_memory must be >= 0 bytes \(0 = no limit\)"),
    (lambda m: m.plan(1, 2, 3, max_memory=-5), r"max_memory must be >= 0 bytes \(0 = no limit\), got -5"),
    (lambda m: m.decode(lat(), [0.0] * 3, [1.0] * 4), "mean has 3 values; the weights have z_dim=4"),
    (lambda m: wv._C.Model([1]), "weights must be a dict mapping checkpoint keys to arrays"),
    (lambda m: wv._C.Model(random_weights(8, 4), "metal"), "backend 'metal' is not one of 'cpu', 'cuda'"),
])
def test_the_extension_checks_on_its_own_what_the_python_layer_checks_first(small, call, pattern):
    """wanvideo_vae._C called directly (as the Python layer's own checks are bypassed) refuses the same
    inputs with its own messages."""
    with pytest.raises(E, match=pattern):
        call(small._model)


def test_a_closed_model_refuses_to_decode_in_the_extension():
    model = wv._C.Model(random_weights(8, 4))
    model.close()
    with pytest.raises(E, match=r"this Decoder is closed \(close\(\) freed its weights and memory\)"):
        model.decode(lat(), *random_stats(4))
