"""Bounded hypothesis fuzzing of the boundary: the array-interface parser, latents of arbitrary
shapes, dtypes and strides, decode's and plan's keyword arguments, and mutated weight tables. Nothing
may crash; everything either works or raises a clear exception."""
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


anything = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=2),
                     st.just([64]), st.just(np.int64(64)), st.just(np.float32(48.5)), st.just(object()))
# decode's keyword arguments, each with values it takes (one_spoiled puts `anything` in the place of one)
good = {"tile_x": st.integers(40, 120) | st.sampled_from([272, 2**31 - 1]) | st.just(np.int64(48)),
        "tile_y": st.integers(40, 120) | st.sampled_from([272, 2**31 - 1]),
        "tile_stride_x": st.integers(1, 39), "tile_stride_y": st.integers(1, 39),
        "enable_vae_tiling": st.booleans(), "raw": st.sampled_from([False, False, True]), "end_frame": st.booleans(),
        "max_memory": st.none() | st.integers(1_000_000, 3_000_000) | st.just(2.5e6) | st.just(2**63 - 1),
        "dtype": st.sampled_from([None, np.float32, "float32", None, np.uint8, "uint8", "u1"]),
        "mean": st.none() | st.lists(st.floats(-2, 2), min_size=4, max_size=4) | st.just(np.zeros(4, np.float16)),
        "std": st.none() | st.lists(st.floats(0.5, 2), min_size=4, max_size=4)}


def one_spoiled(values):
    """Dicts of values from `values`' strategies; in about half of them one value is replaced by anything."""
    return st.fixed_dictionaries(values).flatmap(lambda kw: st.just(kw) | st.sampled_from(sorted(values)).flatmap(
        lambda name: anything.map(lambda bad: {**kw, name: bad})))


keywords = one_spoiled(good)


class CallbackError(Exception):
    """What a fuzzed progress callback raises: it must reach the caller as it is."""


def fuzzed_progress(kind, raised):
    """None, callbacks that stop the decode (False, NumPy's False), one that raises, or something not callable."""
    def raise_(exc):
        raised.append(exc)
        raise exc
    return {"none": None, "stop": lambda done, total: done < 2,
            "raise": lambda done, total: raise_(CallbackError(done)),
            "numpy stop": lambda done, total: np.bool_(done < 1), "not callable": 5}[kind]


@fuzz(200)
@given(T=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), five_d=st.booleans(), kw=keywords,
       progress=st.sampled_from(["none", "stop", "raise", "numpy stop", "not callable"]), seed=st.integers(0, 2**16))
def test_decode_keyword_arguments(small, T, h, w, five_d, kw, progress, seed):
    """Whatever the keyword arguments, a decode either gives the untiled decode's frames (tiles and
    budgets never change them) or raises a clear error, or the callback's own exception as it is."""
    lat = np.random.default_rng(seed).standard_normal((4, T, h, w)).astype(np.float32)
    raised = []
    try:
        out = small.decode(lat[None] if five_d else lat, progress=fuzzed_progress(progress, raised), **kw)
    except CallbackError as e:
        assert raised and e is raised[-1]
        return
    except CLEAR:
        assert not raised  # not the callback's exception put in another's place
        return
    assert not raised
    stats = small.last_stats
    assert stats["arena_high_water"] == stats["planned_bytes"] <= (kw["max_memory"] or 2**63)
    same = {k: kw[k] for k in ("raw", "end_frame", "dtype", "mean", "std")}
    whole = small.decode(lat, enable_vae_tiling=False, **same)
    assert out.dtype == whole.dtype and out.shape == whole.shape and out.shape[1:] == (8 * h, 8 * w, 3)
    # float32 as in test_tiling; uint8: a value 1e-5 from a rounding edge may land one step over
    tol = 1 if out.dtype == np.uint8 else 1e-5 * max(1.0, np.abs(whole).max())
    assert np.abs(out.astype(np.float32) - whole).max() <= tol


@fuzz(80)
@given(size=one_spoiled({"T": st.integers(1, 9), "h": st.integers(1, 99), "w": st.integers(1, 99),
                         "max_memory": st.integers(20, 29).flatmap(lambda e: st.integers(2**e, 2**(e + 1)))}),
       kw=keywords)
def test_plan_keyword_arguments(small, size, kw):
    """plan() refuses what decode() refuses, with a clear error; a plan it makes fits its budget."""
    kw = {k: v for k, v in kw.items() if k not in ("raw", "mean", "std")}
    try:
        plan = small.plan(size["T"], size["h"], size["w"], **{**kw, "max_memory": size["max_memory"]})
    except CLEAR:
        return
    assert 0 < plan["planned_bytes"] <= (2**63 if size["max_memory"] is None else size["max_memory"])


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
