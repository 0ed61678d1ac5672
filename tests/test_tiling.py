"""Exact halo tiling: tiled == untiled, the memory plan, the budget."""
import re
import types

import numpy as np
import pytest

import wanvideo_vae as wv
from helpers import causal_conv_weights, random_latents, random_stats, random_weights

TILE_TOL = 1e-5  # tiled vs untiled, fp32: only the GEMM summation order differs


def decoder(dim, z_dim=4, seed=0):
    mean, std = random_stats(z_dim)
    return wv.Decoder(random_weights(dim, z_dim, seed=seed), mean=mean, std=std)


def test_halos_derived_from_layer_list_match_design():
    """DESIGN.md section 3: 15 / 12 / 10 / 7 at the four cut points."""
    halos = decoder(8).halos()
    assert halos["decoder.middle.2."] == 15
    assert halos["decoder.upsamples.4."] == 12
    assert halos["decoder.upsamples.8."] == 10
    assert halos["decoder.upsamples.12."] == 7
    assert halos["decoder.upsamples.3."] == 7
    # tiles start at the first upsample: the first stage runs on the whole frame, with the trunk
    plan = decoder(8).plan(2, 40, 40, tile_x=176, tile_y=176, tile_stride_x=8, tile_stride_y=8)
    assert [s["first_block"] for s in plan["segments"]] == [f"decoder.upsamples.{i}." for i in (3, 3, 7, 11)]
    assert [s["halo"] for s in plan["segments"]] == [7, 12, 10, 7]
    assert [s["scale"] for s in plan["segments"]] == [1, 2, 4, 8]
    assert plan["out_halo"] == 7


def test_tiles_start_after_the_attention_where_the_first_stage_would_set_the_peak():
    """A large frame in small tiles: the first stage's caches on the whole frame would take more than
    the tiles, so the tiles start after the attention (15 px halos); in larger tiles they start at the
    first upsample. Both decode as the untiled call does."""
    dec = decoder(8)
    lat = random_latents(4, 1, 32, 32, seed=9)
    whole = dec.decode(lat, raw=True, enable_vae_tiling=False)
    for tile, first, halos in ((40, "decoder.middle.2.", [15, 12, 10, 7]), (136, "decoder.upsamples.3.", [7, 12, 10, 7])):
        kw = dict(tile_x=tile, tile_y=tile, tile_stride_x=8, tile_stride_y=8)
        plan = dec.plan(1, 32, 32, **kw)
        assert plan["n_tiles"] > 1 and plan["segments"][0]["first_block"] == first
        assert [s["halo"] for s in plan["segments"]] == halos
        tiled = dec.decode(lat, raw=True, **kw)
        assert np.abs(tiled - whole).max() <= TILE_TOL * max(1.0, np.abs(whole).max())


def test_tile_size_maps_to_core():
    """tile = core + 2 x 7 px output halo, core rounded down to a multiple of 8."""
    plan = decoder(8).plan(1, 90, 160, tile_x=272, tile_y=272)
    assert plan["core_x"] == plan["core_y"] == 256
    assert (plan["tiles_x"], plan["tiles_y"]) == (5, 3)
    plan = decoder(8).plan(1, 90, 160, enable_vae_tiling=False)
    assert plan["n_tiles"] == 1 and plan["core_x"] == 1280 and plan["core_y"] == 720
    plan = decoder(8).plan(1, 90, 160, tile_x=400, tile_y=272)  # x is the width, y the height
    assert (plan["core_x"], plan["core_y"], plan["tiles_x"], plan["tiles_y"]) == (384, 256, 4, 3)


def test_attention_chunk_stays_under_2_31_scores():
    """Large tiles of a 4K frame leave room for more query rows than one GEMM's score matrix may hold
    (BLAS libraries index it in int): the chunk stops at 2^31 - 1 scores."""
    dec = wv.Decoder(random_weights(96, 16))
    N = 270 * 480
    plan = dec.plan(81, 270, 480, tile_x=2048, tile_y=2048, tile_stride_x=8, tile_stride_y=8, max_memory=1 << 40)
    assert plan["n_tiles"] > 1 and plan["attention_rows"] == (2**31 - 1) // N


def test_attention_chunk_grows_into_the_room_tiles_leave():
    """Several tiles: the trunk's buffers share memory with the tiles', and the attention's query chunk
    grows into what the tiles leave (up to the whole frame); the result stays the untiled one. A
    single tile (the trunk streams beside it) keeps the 4M-score chunk."""
    dec = decoder(8)
    h, w = 48, 64  # 3072 positions: the base chunk is 4M / 3072 = 1365 rows
    base = (1 << 22) // (h * w)
    assert dec.plan(1, h, w, enable_vae_tiling=False)["attention_rows"] == base
    tiled = dec.plan(1, h, w, tile_x=200, tile_y=200, tile_stride_x=8, tile_stride_y=8)
    assert tiled["n_tiles"] > 1 and base < tiled["attention_rows"] <= h * w
    lat = random_latents(4, 1, h, w, seed=5)
    a = dec.decode(lat, raw=True, enable_vae_tiling=False)
    b = dec.decode(lat, raw=True, tile_x=200, tile_y=200, tile_stride_x=8, tile_stride_y=8)
    stats = dec.last_stats
    assert stats["attention_rows"] == tiled["attention_rows"]
    assert stats["arena_high_water"] == stats["planned_bytes"] == tiled["planned_bytes"]
    assert np.abs(a - b).max() <= TILE_TOL * max(1.0, np.abs(a).max())


def _geometries():
    rng = np.random.default_rng(1234)
    fixed = [  # (dim, T, h, w, tile_x, tile_y): edge tiles of one latent pixel, tiles not dividing the frame
        (8, 2, 4, 4, 40, 40),      # core 24 px: 32 px frame -> tiles 24 + 8
        (8, 3, 5, 9, 40, 56),
        (8, 1, 1, 1, 40, 40),
        (8, 6, 3, 7, 48, 40),
        (16, 2, 7, 5, 40, 64),
        (8, 2, 12, 3, 1000, 40),   # tile larger than the frame on one axis
    ]
    out = list(fixed)
    while len(out) < 34:
        h, w, T = int(rng.integers(1, 41)), int(rng.integers(1, 41)), int(rng.integers(1, 7))
        if h * w * T > 1600:
            continue
        tile_x = int(rng.integers(5, max(6, w + 3))) * 8  # up to the frame and 2 latent px: mostly several tiles
        tile_y = int(rng.integers(5, max(6, h + 3))) * 8
        out.append((8 if len(out) % 5 else 16, T, h, w, tile_x, tile_y))
    return out


@pytest.mark.parametrize("dim,T,h,w,tile_x,tile_y", _geometries())
def test_tiled_equals_untiled(dim, T, h, w, tile_x, tile_y):
    dec = decoder(dim, seed=T + h + w)
    lat = random_latents(4, T, h, w, seed=h * w)
    whole = dec.decode(lat, raw=True, enable_vae_tiling=False)
    tiled = dec.decode(lat, raw=True, tile_x=tile_x, tile_y=tile_y, tile_stride_x=32, tile_stride_y=32)
    stats = dec.last_stats
    assert stats["arena_high_water"] == stats["planned_bytes"]
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= TILE_TOL * max(1.0, np.abs(whole).max())


def test_end_frame_tiled_equals_untiled():
    dec = decoder(8)
    lat = random_latents(4, 4, 6, 5)
    whole = dec.decode(lat, raw=True, end_frame=True, enable_vae_tiling=False)
    tiled = dec.decode(lat, raw=True, end_frame=True, tile_x=40, tile_y=40, tile_stride_x=32, tile_stride_y=32)
    assert np.abs(tiled - whole).max() <= TILE_TOL


def test_planned_bytes_equal_high_water_mark():
    dec = decoder(8)
    lat = random_latents(4, 3, 9, 11)
    for kw in (dict(enable_vae_tiling=False), dict(tile_x=40, tile_y=56), dict(tile_x=88, tile_y=88)):
        dec.decode(lat, tile_stride_x=32, tile_stride_y=32, **kw)
        assert dec.last_stats["arena_high_water"] == dec.last_stats["planned_bytes"]


def _cores_tile_the_frame(plan):
    covered = np.zeros((plan["height"], plan["width"]), int)
    for y0, y1, x0, x1 in plan["tile_cores"]:
        covered[y0:y1, x0:x1] += 1
    return (covered == 1).all()


def test_every_tiling_of_small_frames_plans():
    """The planner checks each tile's region against the grid its buffers are sized for (an internal
    error otherwise): frames of every small size, in tiles of every size down to the least, and in
    budgets that make it shrink the tiles or split the frame evenly, all plan, and their cores tile
    the frame once."""
    dec = decoder(8)
    small = dict(tile_stride_x=8, tile_stride_y=8)
    for h in range(1, 14, 3):
        for w in range(1, 30, 4):
            for tile in (24, 40, 56, 88, 136, 272):
                plan = dec.plan(2, h, w, tile_x=tile, tile_y=tile + 16, **small)
                assert _cores_tile_the_frame(plan)
            least = dec.plan(2, h, w, tile_x=24, tile_y=24, **small)["planned_bytes"]
            whole = dec.plan(2, h, w, enable_vae_tiling=False)["planned_bytes"]
            for budget in np.linspace(least, whole, 5).astype(int):
                plan = dec.plan(2, h, w, enable_vae_tiling=False, max_memory=int(budget))
                assert plan["planned_bytes"] <= budget and _cores_tile_the_frame(plan)


def test_memory_is_set_by_the_tile_not_the_frame_or_length():
    """Fixed tile: the arena minus the trunk output is the same for 512^2 and 1024^2 frames and for
    T = 2 and T = 6; the trunk output ([T][h*w][4 dim]) is the only part that grows."""
    dec = decoder(96, z_dim=16)
    plans = {(T, side): dec.plan(T, side // 8, side // 8, tile_x=272, tile_y=272)
             for T in (2, 6) for side in (512, 1024)}
    rest = {k: p["planned_bytes"] - p["trunk_out_bytes"] for k, p in plans.items()}
    assert len(set(rest.values())) == 1, rest
    for (T, side), p in plans.items():
        assert p["trunk_out_bytes"] >= T * (side // 8) ** 2 * 384 * 4
    # measured on a reduced-width decode: only the trunk output grows with T
    small = decoder(8)
    seen = set()
    for T in (1, 2, 3):
        small.decode(random_latents(4, T, 24, 24), tile_x=72, tile_y=72, tile_stride_x=64, tile_stride_y=64)
        s = small.last_stats
        assert s["arena_high_water"] == s["planned_bytes"]
        seen.add(s["arena_high_water"] - s["trunk_out_bytes"])
    assert len(seen) == 1


def test_budget_shrinks_tiles_and_keeps_the_result():
    dec = decoder(8)
    lat = random_latents(4, 2, 12, 14)
    whole = dec.decode(lat, raw=True, enable_vae_tiling=False)
    need = dec.last_stats["planned_bytes"]
    out = dec.decode(lat, raw=True, enable_vae_tiling=False, max_memory=need // 2)
    s = dec.last_stats
    assert s["shrunk_to_fit"] is True and s["n_tiles"] > 1 and s["planned_bytes"] <= need // 2
    assert dec.plan(2, 12, 14, enable_vae_tiling=False)["shrunk_to_fit"] is False
    assert np.abs(out - whole).max() <= TILE_TOL
    with pytest.raises(MemoryError, match="budget is 1000 bytes"):
        dec.decode(lat, max_memory=1000)


def test_the_plan_lists_every_buffer_and_tile():
    """plan()'s buffers: the arena's named ones, then a causal cache per causal conv, named by its
    checkpoint key, with the frames it keeps (the CPU backend runs the taps apart: 2) and the conv's
    input channels; its tile cores: the grid in row-major order, covering the frame once."""
    weights = random_weights(8, 4)
    dec = wv.Decoder(weights, mean=[0.0] * 4, std=[1.0] * 4)
    p = dec.plan(2, 12, 14, tile_x=40, tile_y=56, tile_stride_x=8, tile_stride_y=8)
    names = [name.split(":")[0] for name, _ in p["buffers"]]
    assert names[:12] == ["TRUNK_OUT", "WORKSPACE", "WEIGHT_SCRATCH", "TRUNK_X", "TRUNK_Y", "TRUNK_T", "ATTN_IN",
                          "ATTN_QKV", "ATTN_OUT", "ATTN_SCORES", "TILE_SCRATCH", "OUTPUT_STAGING"]
    causal = {name: w.shape[1] for name, w in causal_conv_weights(weights).items()}
    caches = [re.fullmatch(r"causal cache of (\S+): \[2 frames\]\[P\]\[(\d+)\]", name) for name, _ in p["buffers"][12:]]
    assert len(caches) == dec._model.cache_slots == len(causal) and all(caches), p["buffers"][12:]
    assert {c[1]: int(c[2]) for c in caches} == causal
    assert (p["tiles_x"], p["tiles_y"]) == (5, 3) and len(p["tile_cores"]) == 15  # cores 24 x 40, edges cut
    cx, cy = p["core_x"], p["core_y"]
    assert p["tile_cores"] == [(ty * cy, min(p["height"], (ty + 1) * cy), tx * cx, min(p["width"], (tx + 1) * cx))
                               for ty in range(p["tiles_y"]) for tx in range(p["tiles_x"])]


@pytest.mark.parametrize("h,w,tile_x,tile_y", [(20, 6, 56, 1000), (20, 6, 40, 120), (12, 12, 48, 200)])
def test_tiles_shrunk_to_fit_a_budget_stay_within_the_asked_size(h, w, tile_x, tile_y):
    """A budget shrinks tiles, and the planner may then split the frame evenly instead (less work), but
    a tile never grows past the size asked on either axis (here narrow tiles of a tall frame)."""
    dec = decoder(8)
    whole = dec.plan(2, h, w, enable_vae_tiling=False, max_memory=1 << 62)["planned_bytes"]
    for percent in range(50, 100, 5):
        try:
            p = dec.plan(2, h, w, tile_x=tile_x, tile_y=tile_y, tile_stride_x=8, tile_stride_y=8,
                         max_memory=whole * percent // 100)
        except MemoryError:
            continue
        assert p["core_x"] + 2 * p["out_halo"] <= tile_x and p["core_y"] + 2 * p["out_halo"] <= tile_y, percent


@pytest.mark.parametrize("T,h,w,budget,tiles,flops", [
    # of the two places the trunk may end, the one whose largest fitting tiles make less work (the
    # other fits in tiles of 8 x 8 output pixels: 256 of them, 3.1e11 FLOP)
    (3, 16, 16, 3888979, (8, 8), 96908063296),
    # an even split with as many tiles as the square ones: 40 rows of one tile (2 x 20 does more work)
    (2, 40, 4, 1872332, (1, 40), 17795349504),
])
def test_a_shrunk_plan_is_the_one_with_the_least_work(T, h, w, budget, tiles, flops):
    p = decoder(8)._model.plan(T, h, w, tile_x=0, tile_y=0, max_memory=budget)
    assert p["shrunk_to_fit"] and p["planned_bytes"] <= budget
    assert (p["tiles_x"], p["tiles_y"]) == tiles and p["conv_flops"] == flops


def test_tile_validation():
    dec = decoder(8)
    lat = random_latents(4, 1, 4, 4)
    with pytest.raises(wv.WanVAEError, match="exceed the tile stride"):
        dec.decode(lat, tile_x=128, tile_stride_x=128)
    with pytest.raises(wv.WanVAEError, match="exceed the tile stride"):
        dec.decode(lat, tile_y=96, tile_stride_y=128)
    for name in ("tile_x", "tile_y", "tile_stride_x", "tile_stride_y"):
        with pytest.raises(wv.WanVAEError, match=f"{name} must be a positive int"):
            dec.decode(lat, **{name: 0})
    with pytest.raises(wv.WanVAEError, match="smaller than the halo allows"):
        dec.decode(lat, tile_x=16, tile_y=64, tile_stride_x=8, tile_stride_y=8)


def _cgroup_tree(tmp_path, files, proc_lines):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text("".join(line + "\n" for line in proc_lines))
    return str(tmp_path / "cg"), str(tmp_path / "proc_cgroup")


@pytest.mark.parametrize("files,proc_lines,headroom", [
    # cgroup v2 in a container: its own cgroup at the root; file cache counts as free
    ({"cg/memory.max": "4294967296\n", "cg/memory.current": "3221225472\n",
      "cg/memory.stat": "anon 1\ninactive_file 536870912\nactive_file 536870912\n"}, ["0::/"], 2 << 30),
    # at (or past) its limit: no room, which is not "no limit"
    ({"cg/memory.max": "1000\n", "cg/memory.current": "1200\n"}, ["0::/"], 0),
    # a limit on a parent (a pod's, a slice's) bounds a child without one; the least room wins
    ({"cg/pod/memory.max": "1000\n", "cg/pod/memory.current": "400\n", "cg/pod/c/memory.max": "max\n",
      "cg/pod/c/memory.current": "300\n"}, ["0::/pod/c"], 600),
    ({"cg/pod/memory.max": "1000\n", "cg/pod/memory.current": "400\n", "cg/pod/c/memory.max": "500\n",
      "cg/pod/c/memory.current": "300\n"}, ["0::/pod/c"], 200),
    # v2 on a host: the process's own folder; no limit there ("max") and none at the root
    ({"cg/app.slice/memory.max": "max\n", "cg/app.slice/memory.current": "5\n"}, ["0::/app.slice"], None),
    ({"cg/app.slice/memory.max": "1000\n", "cg/app.slice/memory.current": "400\n"}, ["0::/app.slice"], 600),
    # cgroup v1: the memory controller's folder
    ({"cg/memory/docker/x/memory.limit_in_bytes": "8000\n", "cg/memory/docker/x/memory.usage_in_bytes": "9000\n",
      "cg/memory/docker/x/memory.stat": "total_inactive_file 2000\n"}, ["4:memory:/docker/x", "0::/"], 1000),
    ({}, ["0::/"], None),
])
def test_cgroup_memory_limit_bounds_the_host_budget(tmp_path, files, proc_lines, headroom):
    """In a container, MemAvailable is the machine's: a CPU decode planned by it alone would be killed
    by the container's OOM killer instead of shrinking its tiles."""
    from wanvideo_vae.sysmem import cgroup_headroom_bytes
    root, proc = _cgroup_tree(tmp_path, files, proc_lines)
    assert cgroup_headroom_bytes(root, proc) == headroom


def test_linux_host_memory_is_the_least_of_meminfo_and_the_cgroups(tmp_path, monkeypatch):
    """/proc/meminfo counts in KiB; a container's limit below the machine's free memory bounds it."""
    from wanvideo_vae import sysmem
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       65536 kB\nMemFree:         2048 kB\nMemAvailable:    1024 kB\n")
    assert sysmem._meminfo_available(str(meminfo)) == 1 << 20
    monkeypatch.setattr(sysmem.sys, "platform", "linux")
    monkeypatch.setattr(sysmem, "_meminfo_available", lambda: 10 << 30)
    monkeypatch.setattr(sysmem, "cgroup_headroom_bytes", lambda: 2 << 30)
    assert sysmem.available_host_bytes() == 2 << 30
    monkeypatch.setattr(sysmem, "cgroup_headroom_bytes", lambda: None)
    assert sysmem.available_host_bytes() == 10 << 30


class _Reading:
    """A memory reading a test sets: read() returns `value`."""

    def __init__(self, value):
        self.value = value

    def __call__(self):
        return self.value


def test_a_peak_sampler_reports_the_peak_and_what_the_block_left():
    """The benchmarks' peak memory: grown is the highest reading above the one at entry, held the
    reading at exit (taken then, not at the last sample) less the one at entry."""
    import time
    from wanvideo_vae.sysmem import PeakSampler

    def sampler(period, value):
        s = PeakSampler()
        s.period, s.read = period, _Reading(value)
        return s

    s = sampler(3600, 5)  # no sample inside the block: the one at exit alone
    with s:
        s.read.value = 3
    assert (s.grown, s.held) == (0, -2)
    s = sampler(0.001, 5)
    with s:
        s.read.value = 12
        deadline = time.monotonic() + 10
        while s.peak != 12 and time.monotonic() < deadline:
            time.sleep(0.001)
        s.read.value = 3
    assert (s.grown, s.held) == (7, -2)


VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                                3000.
Pages active:                            200000.
Pages inactive:                           10000.
Pages speculative:                          500.
Pages throttled:                              0.
Pages wired down:                         90000.
Pages purgeable:                            700.
"Translation faults":                 123456789.
Pages stored in compressor:               40000.
"""


def test_macos_host_memory_is_read_from_vm_stat(monkeypatch):
    """macOS has no SC_AVPHYS_PAGES: without its own reading a CPU decode there had no budget at all
    (720p x 81 untiled: 10 GiB planned on an 8 GiB Mac). Free, speculative and inactive pages count."""
    from wanvideo_vae import sysmem
    assert sysmem.vm_stat_available(VM_STAT) == (3000 + 500 + 10000) * 16384
    assert sysmem.vm_stat_available("") is None and sysmem.vm_stat_available(VM_STAT.splitlines()[0]) is None
    monkeypatch.setattr(sysmem.sys, "platform", "darwin")
    monkeypatch.setattr(sysmem.subprocess, "run", lambda cmd, **kw: types.SimpleNamespace(stdout=VM_STAT))
    assert sysmem.available_host_bytes() == 13500 * 16384

    def missing(cmd, **kw):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(sysmem.subprocess, "run", missing)
    assert sysmem.available_host_bytes() is None


def test_no_host_memory_left_is_a_budget_not_no_limit(monkeypatch):
    """A container at its memory limit leaves 0 bytes; the planner reads a budget of 0 as "no limit",
    so the decode would plan unbounded exactly where the OOM killer strikes. It plans within 1 byte:
    MemoryError, saying what it needs."""
    import wanvideo_vae.api as api
    monkeypatch.setattr(api, "available_host_bytes", lambda: 10 << 30)  # a share of it, the rest the host's
    assert api._budget(None) == int((10 << 30) * api.HOST_BUDGET_SHARE) < 10 << 30
    monkeypatch.setattr(api, "available_host_bytes", lambda: 0)
    assert api._budget(None) == 1
    with pytest.raises(MemoryError, match="but the budget is 1 byte;"):
        decoder(8).decode(random_latents(4, 1, 3, 4, seed=3))
    monkeypatch.setattr(api, "available_host_bytes", lambda: None)  # unknown: no limit
    assert api._budget(None) == 0


@pytest.mark.parametrize("T,h,w", [(2, 10, 52), (2, 31, 31), (1, 28, 28), (3, 9, 11)])
def test_any_budget_a_plan_meets_is_met(T, h, w):
    """Every tile size's plan needs some bytes; a budget of that many is met (by that plan or a better
    one), never refused. The planner picked, of its two trunks, the one whose tiles set the peak rather
    than the smaller plan, and a budget between the two raised MemoryError (10 x 52 untiled in
    3526400 bytes, say)."""
    dec = decoder(8)
    for tile_x in range(22, 8 * w + 15, 8):
        for tile_y in range(22, 8 * h + 15, 8):
            need = dec.plan(T, h, w, tile_x=tile_x, tile_y=tile_y, tile_stride_x=8, tile_stride_y=8,
                            max_memory=1 << 62)["planned_bytes"]
            plan = dec.plan(T, h, w, enable_vae_tiling=False, max_memory=need)
            assert plan["planned_bytes"] <= need, (tile_x, tile_y)


def test_frames_of_2_31_latent_positions_are_refused():
    """The attention indexes a frame's positions in int: a latent frame of 2**31 or more is refused
    when planned, whatever the budget (the planner took up to 2**34)."""
    dec = decoder(8)
    dec.plan(1, 16384, 16384, max_memory=1 << 62)  # 2**28 positions: planned
    with pytest.raises(wv.WanVAEError, match="latent grid 46341x46341 is too large"):
        dec.plan(1, 46341, 46341, max_memory=1 << 62)


def test_a_budget_is_met_on_frames_whose_smallest_tiles_would_be_too_many():
    """On a frame of 1025 x 1025 latents, the search for the largest tile that fits walked down to
    tiles of which there would be more than 2**20, and that plan's error ended the shrinking although
    larger tiles fit: "1025 x 1025 tiles is too many". Where no tile fits, the error is a MemoryError
    naming the least budget (the smallest tiles that are not too many take no less than larger ones: the
    whole-frame trunk is the bound) and the tiles the planner takes in it."""
    dec = decoder(8)
    need = dec.plan(1, 1025, 1025, tile_x=1030, tile_y=1030, tile_stride_x=8, tile_stride_y=8,
                    max_memory=1 << 62)["planned_bytes"]
    plan = dec.plan(1, 1025, 1025, enable_vae_tiling=False, max_memory=need)
    assert plan["planned_bytes"] <= need and plan["shrunk_to_fit"]
    with pytest.raises(MemoryError, match=r"the least it can take is (\d+) bytes \([\d.]+ [KMG]iB\), in 7x6 tiles "
                                          r"of 1190x1382 px; of it, ") as refused:
        dec.plan(1, 1025, 1025, enable_vae_tiling=False, max_memory=need // 2)
    least = int(refused.value.args[0].split("the least it can take is ")[1].split(" ")[0])
    plan = dec.plan(1, 1025, 1025, enable_vae_tiling=False, max_memory=least)
    assert plan["planned_bytes"] == least and (plan["tiles_x"], plan["tiles_y"]) == (7, 6)


def test_work_of_a_long_large_decode_is_counted_past_2_63():
    """The plan's convolution work (compared to choose between plans) overflowed int64 and wrapped
    negative: a 1080p decode of 100000 latent frames is some 9.4e18 FLOP."""
    full = wv.Decoder(random_weights(96, 16, seed=0))
    short = full.plan(1000, 135, 240, max_memory=1 << 62)["conv_flops"]
    long = full.plan(100000, 135, 240, max_memory=1 << 62)["conv_flops"]
    assert long > 2**63 and 99 < long / short < 101


def test_the_least_budget_a_memory_error_names_is_exact():
    """A budget no tiling fits: the MemoryError names the least budget that does; planning with it
    is accepted and one byte less is refused (random requests; the figure was the short trunk's at
    22 px, too high in most of them and at times above the request's own)."""
    rng = np.random.default_rng(11)
    for _ in range(60):
        dec = decoder(int(rng.choice([4, 8])))
        T, h, w = int(rng.integers(1, 5)), int(rng.integers(1, 25)), int(rng.integers(1, 25))
        kw = dict(tile_x=int(rng.integers(22, 400)), tile_y=int(rng.integers(22, 400)), tile_stride_x=8,
                  tile_stride_y=8, enable_vae_tiling=bool(rng.random() < 0.8))
        with pytest.raises(MemoryError) as refused:
            dec.plan(T, h, w, max_memory=1, **kw)
        named = re.search(r"the least it can take is (\d+) bytes[^,]*, (untiled|in (\d+)x(\d+) tiles of (\d+)x(\d+) px)",
                          str(refused.value))
        least = int(named.group(1))
        plan = dec.plan(T, h, w, max_memory=least, **kw)
        assert plan["planned_bytes"] <= least
        if named.group(2) == "untiled":  # the tiles the planner takes in that budget
            assert plan["n_tiles"] == 1
        else:
            tile_x, tile_y = (plan[f"core_{a}"] + 2 * plan["out_halo"] for a in "xy")
            assert (plan["tiles_x"], plan["tiles_y"], tile_x, tile_y) == tuple(int(g) for g in named.groups()[2:])
        with pytest.raises(MemoryError):
            dec.plan(T, h, w, max_memory=least - 1, **kw)
    # a streamed trunk: no T
    with pytest.raises(MemoryError, match=r"the least it can take is \d+ bytes \([\d.]+ KiB\), untiled\. Pass max_memory=\d+ or more\.$"):
        decoder(8).plan(5, 1, 1, max_memory=1)


def hand_conv_flops(weights, T, h, w):
    """2 x the multiply-adds of every convolution of an untiled T x h x w decode, counted from the
    checkpoint's shapes in its order: each stage on its own frames and grid; a time_conv (causal, 3 taps,
    C -> 2C) on all but the first frame; an upsample's 3x3 conv run sub-pixel: four 2x2 phases over the
    low-resolution grid grown by one (its zero ring), on the frames after the time doubling."""
    H, W, doubled, total = h, w, 1, 0
    for key, shape in ((k, v.shape) for k, v in weights.items() if k.endswith(".weight") and v.ndim >= 4):
        frames = 1 + doubled * (T - 1)
        if ".time_conv." in key:
            continue  # counted with its block's resample, which comes first in the checkpoint
        if ".resample." in key:
            time_conv = key.replace("resample.1", "time_conv")
            if time_conv in weights:
                total += 2 * H * W * (frames - 1) * int(np.prod(weights[time_conv].shape))
                doubled *= 2
                frames = 1 + doubled * (T - 1)
            total += 2 * (H + 1) * (W + 1) * frames * shape[0] * 4 * shape[1] * 2 * 2
            H, W = 2 * H, 2 * W
        else:
            total += 2 * H * W * frames * int(np.prod(shape))
    return total


@pytest.mark.parametrize("T,h,w", [(1, 3, 4), (2, 3, 4), (3, 2, 5), (5, 1, 1)])
def test_the_plans_convolution_work_is_the_hand_count(T, h, w):
    weights = random_weights(8, 4, seed=0)
    planned = wv.Decoder(weights).plan(T, h, w, enable_vae_tiling=False, max_memory=1 << 62)["conv_flops"]
    assert planned == hand_conv_flops(weights, T, h, w)


@pytest.mark.parametrize("T,tiled", [(3, True), (2, False)])
def test_progress_counts_every_frame_of_the_trunk_and_of_each_tile(T, tiled):
    dec, calls = decoder(8), []
    dec.decode(random_latents(4, T, 6, 7, seed=3), raw=True, enable_vae_tiling=tiled, tile_x=40, tile_y=40,
               tile_stride_x=8, tile_stride_y=8, progress=lambda done, total: calls.append((done, total)))
    total = T * (1 + dec.last_stats["n_tiles"])  # a step: a latent frame through the trunk, or through a tile
    assert dec.last_stats["n_tiles"] == (6 if tiled else 1)
    assert calls == [(done, total) for done in range(1, total + 1)]


def test_the_extensions_one_shot_decode_tiled():
    """wanvideo_vae._C.decode_tiled: a Model made for one call (backend, precision, device go to it),
    everything else to its decode."""
    weights, (mean, std) = random_weights(8, 4, seed=1), random_stats(4)
    lat = random_latents(4, 2, 3, 4, seed=2)
    frames, stats = wv._C.decode_tiled(weights, lat, mean, std, backend="cpu", precision="fp32", tile_x=40, tile_y=40,
                                       raw=True)
    model = wv._C.Model(weights, "cpu", "fp32")
    same, _ = model.decode(lat, mean, std, tile_x=40, tile_y=40, raw=True)
    whole, _ = model.decode(lat, mean, std, raw=True)
    assert stats["n_tiles"] == 2 and frames.shape == (5, 24, 32, 3)
    np.testing.assert_array_equal(frames, same)
    np.testing.assert_allclose(frames, whole, rtol=0, atol=TILE_TOL)
    with pytest.raises(TypeError, match=r"decode_tiled\(weights, latents, mean, std, \*\*options\)"):
        wv._C.decode_tiled()
    with pytest.raises(wv.WanVAEError, match="'fp8' is not one of"):
        wv._C.decode_tiled(weights, lat, mean, std, precision="fp8")
    # Python 3.13 words it "got an unexpected keyword argument 'tile'", earlier ones "'tile' is an invalid ..."
    with pytest.raises(TypeError, match=r"'tile' is an invalid keyword argument|unexpected keyword argument 'tile'"):
        wv._C.decode_tiled(weights, lat, mean, std, tile=40)
