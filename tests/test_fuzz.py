"""Bounded hypothesis fuzzing of the boundary: the array-interface parser, latents of arbitrary
shapes, dtypes and strides, and mutated weight tables. Nothing may crash; everything either works
or raises a clear exception."""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import wanvideo_vae as wv  # noqa: E402
from helpers import random_stats, random_weights  # noqa: E402

def fuzz(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLEAR = (wv.WanVAEError, OverflowError, MemoryError)

ints = st.integers(-5, 50) | st.integers(-2**70, 2**70)
typestrs = st.sampled_from(["<f4", "<f2", "<V2", "|V2", "=f4", ">f4", "<f8", "<i4", "|b1", "", "f", "<V4"]) | st.text(max_size=4)
interfaces = st.fixed_dictionaries(
    {},
    optional={
        "shape": st.one_of(st.tuples(*[ints] * 2), st.lists(ints, max_size=10).map(tuple), st.integers(), st.none()),
        "typestr": st.one_of(typestrs, st.integers(), st.none()),
        "data": st.one_of(st.tuples(st.integers(0, 2**64 - 1) | ints, st.booleans()), st.none(), st.integers(),
                          st.tuples(st.integers())),
        "strides": st.one_of(st.none(), st.lists(ints, max_size=10).map(tuple), st.text(max_size=3)),
        "version": st.integers(0, 4),
        "stream": st.one_of(st.none(), ints),
        "mask": st.one_of(st.none(), st.integers()),
    })


class Iface:
    def __init__(self, name, iface):
        setattr(self, name, iface)


@fuzz(600)
@given(iface=interfaces, device=st.booleans())
def test_array_interface_parser(iface, device):
    obj = Iface("__cuda_array_interface__" if device else "__array_interface__", iface)
    try:
        parsed = wv._C._parse_array(obj)
    except CLEAR:
        return
    item = {"float32": 4, "float16": 2, "bfloat16": 2}[parsed["dtype"]]
    assert parsed["on_device"] == device
    assert all(n >= 0 for n in parsed["shape"]) and all(s >= 0 and s % item == 0 for s in parsed["strides"])
    assert len(parsed["shape"]) == len(parsed["strides"]) <= 8


@pytest.fixture(scope="module")
def small():
    mean, std = random_stats(4)
    return wv.Decoder(random_weights(8, 4, seed=2), mean=mean, std=std)


@fuzz(60)
@given(z=st.integers(1, 5), T=st.integers(0, 3), h=st.integers(0, 4), w=st.integers(0, 4),
       dtype=st.sampled_from(["<f4", "<f2", "<f8", "<i4", "V2", "|b1"]), transpose=st.booleans(),
       step=st.integers(1, 2), tile=st.sampled_from([0, 40, 64]), seed=st.integers(0, 2**16))
def test_decode_arbitrary_latents(small, z, T, h, w, dtype, transpose, step, tile, seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((z, T, h, w * step)).astype(np.float32)
    arr = base.view(np.uint32).astype(np.uint16).view("V2") if dtype == "V2" else base.astype(dtype)
    arr = arr[..., ::step]
    if transpose:
        arr = np.asfortranarray(arr)
    try:
        out = small.decode(arr, raw=True, enable_vae_tiling=tile > 0, tile_x=tile or 272, tile_y=tile or 272,
                           tile_stride_x=32, tile_stride_y=32)
    except CLEAR:
        return
    assert (z, dtype) != (4, "<i4") and z == 4 and min(T, h, w) >= 1
    assert out.shape == (1 + 4 * (T - 1), 8 * h, 8 * w, 3) and out.dtype == np.float32


BASE = random_weights(8, 4, seed=3)
KEYS = sorted(BASE)


@fuzz(60)
@given(drop=st.lists(st.sampled_from(KEYS), max_size=3), reshape=st.lists(st.sampled_from(KEYS), max_size=2),
       extra=st.lists(st.sampled_from(["decoder.x.weight", "encoder.conv1.weight", "conv1.bias", "model.decoder.y",
                                       "decoder.middle.0.residual.0.gamma2"]), max_size=2),
       prefix=st.booleans(), half=st.lists(st.sampled_from(KEYS), max_size=4))
def test_mutated_weight_tables(drop, reshape, extra, prefix, half):
    w = {k: v for k, v in BASE.items() if k not in drop}
    for k in reshape:
        if k in w:
            w[k] = np.zeros(tuple(w[k].shape[:-1]) + (w[k].shape[-1] + 1,), np.float32)
    for k in half:
        if k in w:
            w[k] = w[k].astype(np.float16)
    for k in extra:
        w[k] = np.zeros(2, np.float32)
    if prefix:
        w = {"model." + k: v for k, v in w.items()}
    mean, std = random_stats(4)
    try:
        dec = wv.Decoder(w, mean=mean, std=std)
    except CLEAR:
        return
    assert not drop and not [k for k in reshape]
    assert dec.decode(np.zeros((4, 1, 2, 2), np.float32)).shape == (1, 16, 16, 3)
