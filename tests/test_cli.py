"""The command line: decode round trips through every latents format, outputs, bench, bad arguments."""
import errno
import gc
import json
import os
import pathlib
import re
import stat
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest

import wanvideo_vae.atomic as atomic
import wanvideo_vae.media as media
from helpers import package_root, random_latents, random_weights, stand_in_cuda_backend, write_safetensors
from wanvideo_vae import WanVAEError, load_weights
from wanvideo_vae.cli import main

try:  # most of the CLI needs no PyTorch: those parts run without it (tests/c/windows_python.sh, say)
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    vae = d / "vae.safetensors"
    write_safetensors(vae, {"model." + k: v for k, v in random_weights(8, 16, seed=4).items()})
    lat = random_latents(16, 2, 3, 4, seed=4)
    np.save(d / "lat.npy", lat)
    write_safetensors(d / "lat.safetensors", {"latents": lat})
    if torch is not None:
        torch.save(torch.from_numpy(lat), d / "lat.pt")
        torch.save({"samples": torch.from_numpy(lat)[None]}, d / "lat.pth")  # a ComfyUI LATENT dict
    return d


LATENTS_FILES = ("lat.npy", "lat.safetensors") + (("lat.pt", "lat.pth") if torch is not None else ())  # of `files`


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts open files and threads in Linux's /proc "
                    "(a Windows Python under Wine sees Wine's own there, which come and go)")
def test_decodes_and_their_failures_leave_no_file_open_nor_thread_running(files, tmp_path):
    """A host runs for days: decodes from checkpoint and latents files to each output, and loads that
    fail, keep no file descriptor (a file, a memory map's, ffmpeg's pipes) once their objects are gone,
    and no thread (a decode's team of CPU threads, a memory sampler) runs on after them."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((files / "vae.safetensors").read_bytes()[:-8])  # a truncated checkpoint
    outs = ["v.avi", "f", "raw.npy"] + (["v.mp4"] if media.have_mp4() else [])

    def day():
        for name in LATENTS_FILES:
            for out in outs:
                assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / name),
                             "--out", str(tmp_path / out), "--quiet"]) == 0
        assert main(["decode", "--vae", str(bad), "--latents", str(files / "lat.npy"), "--out",
                     str(tmp_path / "x.avi"), "--quiet"]) != 0
        with pytest.raises(WanVAEError):
            load_weights(str(bad))
        gc.collect()

    def held():
        return sorted(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))

    day()  # imports and their files, and the libraries' own thread pools, once
    before = held()
    day()
    assert held() == before


def test_decode_round_trips_every_latents_format(files, capsys):
    outs = []
    for name in LATENTS_FILES:
        out = files / f"{name}.out.npy"
        assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / name),
                     "--out", str(out), "--quiet"]) == 0
        outs.append(np.load(out))
    assert outs[0].shape == (5, 24, 32, 3)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    summary = capsys.readouterr().out
    for field in ("frames", "tiles", "time", "memory"):
        assert field in summary


def test_decode_outputs(files):
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet"]
    assert main(base + ["--out", str(files / "frames"), "--contact-sheet", str(files / "sheet.png")]) == 0
    pngs = sorted(os.listdir(files / "frames"))
    assert len(pngs) == 5 and all((files / "frames" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (files / "sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(base + ["--out", str(files / "v.avi")]) == 0
    assert (files / "v.avi").read_bytes()[:4] == b"RIFF"
    raw = files / "raw.npy"
    assert main(base + ["--out", str(raw), "--normalization", "none", "--tile", "0"]) == 0
    tiled = files / "tiled.npy"
    assert main(base + ["--out", str(tiled), "--normalization", "none", "--tile", "40"]) == 0
    assert np.abs(np.load(raw) - np.load(tiled)).max() <= 1e-5  # exact tiling through the CLI too


def test_pictures_are_decoded_to_bytes_and_npy_to_floats(files, tmp_path, monkeypatch):
    """A video or PNG output of the default normalization decodes straight to uint8 (a quarter of the
    host memory), the same bytes the float32 frames of a .npy make; other normalizations, and .npy,
    decode to float32."""
    from wanvideo_vae import cli
    written = {}
    monkeypatch.setattr(cli, "write_frames", lambda frames, out, fps: written.update({os.path.basename(out): frames}))
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet"]
    for out, more in (("f.npy", []), ("v.avi", []), ("pngs", []), ("m.avi", ["--normalization", "minmax"])):
        assert main(base + ["--out", str(tmp_path / out)] + more) == 0
    assert written["f.npy"].dtype == np.float32 and written["m.avi"].dtype == np.float32
    for out in ("v.avi", "pngs"):
        assert written[out].dtype == np.uint8
        np.testing.assert_array_equal(written[out], media.to_uint8(written["f.npy"]))


@pytest.mark.parametrize("args,message", [
    (["decode", "--vae", "missing.safetensors", "--latents", "x.npy"], "no such file"),
    (["decode", "--latents", "x.npy"], "give both --vae and --latents"),
    (["decode", "--vae", "{vae}", "--latents", "{bad_shape}"], "latents"),
    (["decode", "--vae", "{vae}", "--latents", "{unknown}"], "unknown latents format"),
    (["decode", "--vae", "{vae}", "--latents", "{lat}", "--out", "x.gif"], "unknown output format"),
    (["decode", "--vae", "{vae}", "--latents", "{lat}", "--precision", "bf16", "--device", "cpu"], "float32"),
    (["patch-workflow", "nope.json", "out.json"], "nope.json"),
    (["decode", "--vae", "{vae}", "--latents", "{lat}", "--out", "{missing}/x.avi"], "does not exist"),
])
def test_bad_arguments_print_one_line_and_fail(files, tmp_path, capsys, args, message):
    np.save(tmp_path / "bad.npy", np.zeros((3, 2, 2), np.float32))
    (tmp_path / "lat.txt").write_text("1 2 3")
    paths = {"vae": files / "vae.safetensors", "bad_shape": tmp_path / "bad.npy", "unknown": tmp_path / "lat.txt",
             "lat": files / "lat.npy", "missing": tmp_path / "missing"}
    code = main([a.format(**paths) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and message in err


@needs_torch
def test_bench_json_compares_with_pytorch(capsys):
    assert main(["bench", "--dim", "8", "--shape", "2", "6", "7", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    runs = result["runs"]
    assert set(runs) == {"pytorch untiled", "pytorch blended 272/144/128", "ours untiled", "ours exact tiles 272",
                         "ours in half PyTorch's memory", "ours in half PyTorch's memory, uint8 frames"}
    for ours in ("ours untiled", "ours exact tiles 272", "ours in half PyTorch's memory"):
        assert runs[ours]["max_abs_diff_vs_pytorch_untiled"] <= 1e-4
    # the same plan, its frames rounded to bytes: within half a step of 1/255 on the [0, 1] scale
    bytes_run = runs["ours in half PyTorch's memory, uint8 frames"]
    assert 1e-4 < bytes_run["max_abs_diff_vs_pytorch_untiled"] <= 1 / 255 + 1e-4
    assert bytes_run["tiles"] == runs["ours in half PyTorch's memory"]["tiles"]
    assert runs["ours untiled"]["tiles"] == "1x1"
    assert all(r["seconds"] > 0 for r in runs.values())
    # the plan's work (this frame is smaller than one 272 px tile); PyTorch's runs have none of ours
    assert runs["ours untiled"]["conv_flops"] == runs["ours exact tiles 272"]["conv_flops"] > 0
    assert runs["pytorch untiled"]["conv_flops"] == 0
    # ours: the arena the plan allocated (what the GPU verdict holds the sampled peak to); what a call left
    # behind in device memory is a GPU figure, absent on the CPU
    assert runs["ours exact tiles 272"]["planned_bytes"] == runs["ours untiled"]["planned_bytes"] > 0
    assert "planned_bytes" not in runs["pytorch untiled"]
    assert not any("held_bytes" in r for r in runs.values())


def test_module_entry_point_runs(tmp_path):
    out = tmp_path / "demo.avi"
    r = subprocess.run([sys.executable, "-m", "wanvideo_vae", "decode", "--random-shape", "1", "2", "2", "--out",
                        str(out), "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "RANDOM" in r.stdout and out.exists()


@pytest.mark.skipif(__import__("wanvideo_vae").backends()["cuda"]["usable"], reason="a GPU is present")
def test_device_cuda_without_a_gpu_says_why(files, capsys):
    code = main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"),
                 "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --device cuda: the CUDA backend is not usable here (")


@pytest.mark.parametrize("flag,value", [("--fps", "0"), ("--fps", "nan"), ("--fps", "0.001"), ("--max-memory", "inf"),
                                        ("--max-memory", "1e30"), ("--max-memory", "0.5"), ("--max-memory", "1e-300"),
                                        ("--max-memory", "1.5"), ("--seed", "-1"), ("--random-shape", "-1")])
def test_out_of_range_numbers_are_refused_before_decoding(files, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("fps,scale,rate", [(16.0, 1, 16), (12.5, 2, 25), (23.976, 125, 2997)])
def test_avi_frame_rate_keeps_its_fraction(tmp_path, fps, scale, rate):
    path = tmp_path / "v.avi"
    media.write_avi(np.zeros((2, 8, 8, 3), np.float32), path, fps)
    strh = avi_chunk(path.read_bytes(), b"strh")  # fccType, fccHandler, flags, priority, language, initial frames
    assert struct.unpack_from("<II", strh, 20) == (scale, rate)


def test_a_contact_sheet_spreads_its_frames_over_the_whole_video(tmp_path, monkeypatch):
    """48 frames, 24 tiles: every other frame, from the first to the last (not the first 24)."""
    sheets = []
    monkeypatch.setattr(media, "png_bytes", lambda sheet: sheets.append(sheet) or b"")
    frames = np.broadcast_to((np.arange(48, dtype=np.float32) / 47)[:, None, None, None], (48, 2, 2, 3))
    media.contact_sheet(frames, str(tmp_path / "sheet.png"))
    sheet = sheets[0]  # 6 columns x 4 rows of 2 x 2 tiles, 4 px apart
    tiles = [sheet[4 + r * 6, 4 + c * 6, 0] for r in range(4) for c in range(6)]
    assert tiles[0] == 0 and tiles[-1] == 255 and tiles == sorted(tiles) and len(set(tiles)) == 24


def test_avi_byte_rate_past_32_bits_is_capped(tmp_path):
    """avih's bytes per second is 32-bit and advisory: a large frame at a high rate (4.3 MB x 1000 fps)
    is written with it capped, not refused after the decode."""
    path = tmp_path / "v.avi"
    media.write_avi(np.zeros((1, 1200, 1200, 3), np.float32), path, 1000)
    assert struct.unpack_from("<II", avi_chunk(path.read_bytes(), b"avih")) == (1000, 0xFFFFFFFF)


def test_progress_bar_is_made_once(monkeypatch):
    made = []

    class Bar:
        def __init__(self, **kw):
            made.append(self)
            self.n, self.total = 0, kw["total"]

        def update(self, k):
            self.n += k

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "tqdm", type(sys)("tqdm"))
    sys.modules["tqdm"].tqdm = Bar
    from wanvideo_vae.cli import progress_bar
    progress, close = progress_bar(True)
    for done in range(1, 11):
        assert progress(done, 10)
    close()
    assert len(made) == 1
    assert (made[0].n, made[0].total) == (10, 10)  # tqdm's update takes the steps since the last call


@pytest.mark.parametrize("tile,message", [("-5", "0 (the whole frame) or a tile size"), ("1", "0 (the whole frame)"),
                                          ("x", "not a whole number")])
def test_tile_option_is_checked_as_such(files, capsys, tile, message):
    with pytest.raises(SystemExit) as e:
        main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--tile", tile])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--tile" in err and message in err


def test_tile_below_the_halo_names_the_halo(files, tmp_path, capsys):
    code = main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--tile", "5",
                 "--out", str(tmp_path / "o.npy"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "o.npy").exists()
    # in the command line's words: --tile sets the API's tile_x and tile_y
    assert err == ("error: --tile 5 is smaller than the halo allows: a tile needs at least 22 output pixels "
                   "(8 core + 2 x 7 halo)\n")


def test_outputs_checked_before_decoding(files, tmp_path, capsys):
    """A PNG folder name that is a file, a contact sheet in a missing folder: refused before any decode."""
    taken = tmp_path / "taken"
    taken.write_text("")
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet"]
    assert main(base + ["--out", str(taken)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "o.npy"), "--contact-sheet", str(tmp_path / "no" / "s.png")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "o.npy").exists()


def test_output_extensions_in_any_case(files, tmp_path):
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet"]
    assert main(base + ["--out", str(tmp_path / "o.NPY"), "--contact-sheet", str(tmp_path / "s.PNG")]) == 0
    assert np.load(tmp_path / "o.NPY").shape == (5, 24, 32, 3)
    assert main(base + ["--out", str(tmp_path / "v.Avi")]) == 0
    assert (tmp_path / "v.Avi").read_bytes()[:4] == b"RIFF"


def test_avi_past_4_gib_is_refused_before_writing(tmp_path):
    from wanvideo_vae import WanVAEError
    from wanvideo_vae.media import check_output, write_avi
    check_output(str(tmp_path / "v.avi"), (1550, 720, 1280))  # 4.0e9 bytes: fits
    with pytest.raises(WanVAEError, match="past the format's 4 GiB"):
        check_output(str(tmp_path / "v.avi"), (1560, 720, 1280))
    frames = np.broadcast_to(np.float32(0.5), (1560, 720, 1280, 3))  # no memory behind it
    with pytest.raises(WanVAEError, match="past the format's 4 GiB"):
        write_avi(frames, tmp_path / "big.avi", 16)
    assert not (tmp_path / "big.avi").exists()


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 8, 8), (1, 3, 1)])
def test_avi_size_is_what_was_written(tmp_path, shape):
    from wanvideo_vae.media import _avi_file_bytes, write_avi
    write_avi(np.zeros(shape + (3,), np.float32), tmp_path / "v.avi", 16)
    raw = (tmp_path / "v.avi").read_bytes()
    assert len(raw) == _avi_file_bytes(*shape)
    assert int.from_bytes(raw[4:8], "little") == len(raw) - 8  # the RIFF size field


@pytest.mark.parametrize("out", ["v.avi", "frames", "f.npy"])
def test_writers_take_a_frame_at_a_time(tmp_path, out):
    """Writing needs memory for a frame or so, not a converted copy of the whole video."""
    import tracemalloc

    from wanvideo_vae.media import write_frames
    frames = np.random.default_rng(0).random((40, 64, 64, 3), dtype=np.float32)
    tracemalloc.start()
    try:
        write_frames(frames, str(tmp_path / out), 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < frames.nbytes / 4, f"{out}: {peak} bytes for {frames.nbytes} bytes of frames"


def test_latents_file_with_other_tensors_beside_them(tmp_path):
    """A tensor of a dtype the decoder does not read (ComfyUI's int64 batch_index) is left alone."""
    from wanvideo_vae.media import load_latents
    lat = random_latents(16, 2, 3, 4, seed=1)
    write_safetensors(tmp_path / "l.safetensors", {"samples": lat, "batch_index": np.arange(3, dtype=np.int64)})
    np.testing.assert_array_equal(load_latents(tmp_path / "l.safetensors"), lat)


def test_checkpoint_with_other_tensors_beside_the_decoder(tmp_path):
    from wanvideo_vae import load_weights
    w = random_weights(8, 4, seed=2)
    write_safetensors(tmp_path / "v.safetensors", {**w, "step": np.array([7], np.int64)})
    assert set(load_weights(tmp_path / "v.safetensors")) == set(w)


def test_big_endian_latents_decode_as_native(files, tmp_path):
    lat = np.load(files / "lat.npy")
    np.save(tmp_path / "be.npy", lat.astype(">f4"))
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--quiet"]
    assert main(base + ["--latents", str(tmp_path / "be.npy"), "--out", str(tmp_path / "be_out.npy")]) == 0
    assert main(base + ["--latents", str(files / "lat.npy"), "--out", str(tmp_path / "le_out.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "be_out.npy"), np.load(tmp_path / "le_out.npy"))


@needs_torch
def test_auto_precision_on_a_gpu_without_bf16(monkeypatch):
    """--precision auto picks fp32 on a GPU before compute capability 8.0 (the backend refuses bf16 there)."""
    import wanvideo_vae.cli as cli
    feats = {"cuda": {"usable": True, "reason": ""}}
    monkeypatch.setattr(cli, "backends", lambda: feats)
    for capability, precision in (((7, 5), "fp32"), ((8, 0), "bf16")):
        asked = stand_in_cuda_backend(monkeypatch, lambda index, c=capability: c, current=2)
        assert cli._check_backend("auto", "auto") == ("cuda", precision)
        assert asked == [2]  # the current device's


def test_a_path_given_as_bytes_loads(files):
    import wanvideo_vae as wv
    weights = wv.load_weights(os.fsencode(files / "vae.safetensors"))
    assert weights.keys() == wv.load_weights(files / "vae.safetensors").keys()
    np.testing.assert_array_equal(media.load_latents(os.fsencode(files / "lat.npy")), np.load(files / "lat.npy"))


@pytest.mark.parametrize("args", [["decode", "--random-shape", "100001", "1", "1"], ["bench", "--dim", str(2**31)]])
def test_counts_past_what_the_decoder_takes_are_refused_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "must be at most" in capsys.readouterr().err


def test_an_mp4_without_an_ffmpeg_to_run_is_refused_before_the_decode(tmp_path, monkeypatch):
    """imageio-ffmpeg installed without its bundled ffmpeg, and none on PATH: the output is refused
    when checked (and the default output is an .avi), not after the decode with imageio's traceback."""
    import types

    def no_ffmpeg():
        raise RuntimeError("No ffmpeg exe could be found.")

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", types.SimpleNamespace(get_ffmpeg_exe=no_ffmpeg))
    assert not media.have_mp4()
    with pytest.raises(WanVAEError, match=r"writing \.mp4 needs ffmpeg, which imageio-ffmpeg did not find \(No ffmpeg"):
        media.check_output(str(tmp_path / "v.mp4"))


def test_a_png_folder_on_a_drive_that_is_not_there_is_refused(tmp_path, monkeypatch):
    """On Windows the root of a missing drive or share (Z:\\) is its own parent: the search for the
    nearest existing folder stops there instead of going round forever. Here every path is missing."""
    with monkeypatch.context() as m:
        m.setattr(media.os.path, "exists", lambda p: False)
        with pytest.raises(WanVAEError, match="does not exist"):
            media.check_output(str(tmp_path / "frames"))


def test_default_output_is_named_after_the_latents(files, tmp_path, monkeypatch):
    import wanvideo_vae.cli as cli
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "have_mp4", lambda: False)
    assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet"]) == 0
    assert os.listdir(tmp_path) == ["lat.avi"]


def test_end_frame_drops_the_end_images_frame(files, tmp_path):
    """As WanVideoDecode: in end-image mode the last latent frame decodes alone and its frame is dropped."""
    import wanvideo_vae as wv
    out = tmp_path / "e.npy"
    assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--out",
                 str(out), "--end-frame", "--normalization", "none", "--quiet"]) == 0
    full = wv.Decoder(wv.load_weights(files / "vae.safetensors")).decode(np.load(files / "lat.npy"), raw=True,
                                                                         end_frame=True)
    np.testing.assert_array_equal(np.load(out), full[:-1])


def test_default_is_the_whole_frame_where_it_fits(files, tmp_path, capsys):
    """Without --tile the CLI decodes the whole frame (tiles only where the budget needs them): exact
    either way, and the fastest decode that fits. 320 px wide: wider than one 272 px tile."""
    import re
    np.save(tmp_path / "wide.npy", random_latents(16, 1, 3, 40, seed=6))
    assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(tmp_path / "wide.npy"), "--out",
                 str(tmp_path / "o.npy"), "--quiet"]) == 0
    assert re.search(r"^tiles\s+1 x 1,", capsys.readouterr().out, flags=re.M)


def test_end_frame_of_a_single_latent_frame_is_refused(files, tmp_path, capsys):
    np.save(tmp_path / "one.npy", random_latents(16, 1, 3, 4, seed=7))
    code = main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(tmp_path / "one.npy"), "--out",
                 str(tmp_path / "o.npy"), "--end-frame", "--quiet"])
    assert code == 2 and "--end-frame needs at least 2 latent frames" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()


def test_outputs_that_cannot_be_written_are_refused_before_decoding(files, tmp_path, capsys):
    """Tried, not guessed from the folder alone: a folder under a file's name, a path under a file."""
    (tmp_path / "isdir.npy").mkdir()
    (tmp_path / "file").write_text("")
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet"]
    for out, says in ((tmp_path / "isdir.npy", "is a folder"), (tmp_path / "file" / "pngs", "is a file, not a folder"),
                      (tmp_path / "file" / "x.avi", "is a file, not a folder"),
                      (tmp_path / "none" / "x.avi", "does not exist")):
        assert main(base + ["--out", str(out)]) == 2
        assert says in capsys.readouterr().err
    existing = tmp_path / "old.npy"
    existing.write_bytes(b"kept")
    assert main(base + ["--out", str(existing), "--contact-sheet", str(tmp_path / "isdir.npy" / "x" / "s.png")]) == 2
    assert existing.read_bytes() == b"kept"  # opened for the check, not changed


def test_comfyui_latent_files_and_unnormalized_latents(files, tmp_path, capsys):
    """ComfyUI's Save Latent writes .latent (safetensors: latent_tensor beside an empty format marker);
    --unnormalized decodes latents ComfyUI's own Wan nodes keep un-normalized (no Wan 2.1 mean/std)."""
    import wanvideo_vae as wv
    from wanvideo_vae.random_model import random_weights as weights_of
    lat = random_latents(16, 2, 3, 4, seed=5)[None]
    path = tmp_path / "ComfyUI_00001_.LATENT"
    write_safetensors(path, {"latent_tensor": lat, "latent_format_version_0": np.zeros(0, np.float32)})
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(path), "--quiet",
            "--normalization", "none"]
    assert main(base + ["--out", str(tmp_path / "n.npy")]) == 0
    assert "add --unnormalized" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "u.npy"), "--unnormalized"]) == 0
    dec = wv.Decoder(weights_of(8, 16, seed=4))
    np.testing.assert_allclose(np.load(tmp_path / "n.npy"), dec.decode(lat, raw=True, enable_vae_tiling=False),
                               atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "u.npy"),
                               dec.decode(lat, raw=True, enable_vae_tiling=False, mean=[0.0] * 16, std=[1.0] * 16),
                               atol=1e-5)


def test_latents_files_named_in_capitals_or_misnamed(files, tmp_path, capsys):
    lat = np.load(files / "lat.npy")
    with open(tmp_path / "LAT.NPY", "wb") as f:  # np.save would add .npy to the name
        np.save(f, lat)
    np.savez(tmp_path / "archive.npz", lat=lat)
    os.replace(tmp_path / "archive.npz", tmp_path / "archive.npy")
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--quiet", "--out", str(tmp_path / "o.npy")]
    assert main(base + ["--latents", str(tmp_path / "LAT.NPY")]) == 0
    assert main(base + ["--latents", str(tmp_path / "archive.npy")]) == 2
    assert "an .npz archive, not one NumPy array" in capsys.readouterr().err


@needs_torch  # without it bench stops earlier, on that
def test_bench_plot_without_matplotlib_is_refused_first(monkeypatch, capsys, tmp_path):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr("wanvideo_vae.cli.random_weights", lambda *a, **k: pytest.fail("the benchmark ran first"))
    assert main(["bench", "--dim", "8", "--shape", "1", "2", "2", "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


class FullDisk:
    """A file on a disk with room[0] bytes left (shared by its files), which fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self.room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room[0] -= n
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("out", ["v.avi", "f.npy", "frames"])
def test_a_write_failing_midway_names_the_file_and_leaves_no_part(tmp_path, monkeypatch, out):
    """A full disk: the error says which file and why; a file is written under a temporary name and
    renamed when complete, so none is left half-written and one already there stays as it was."""
    import wanvideo_vae.media as media
    from wanvideo_vae import WanVAEError
    real_open, room = open, [1200]  # the .avi's header and a frame, the .npy's header, a PNG
    monkeypatch.setattr(media, "open", lambda path, mode="r", *a, **k: FullDisk(real_open(path, mode, *a, **k), room),
                        raising=False)
    target = tmp_path / out
    if out != "frames":
        target.write_bytes(b"an earlier video")
    with pytest.raises(WanVAEError) as e:
        media.write_frames(np.random.default_rng(2).random((4, 16, 16, 3), dtype=np.float32), str(target), 16)
    said = str(e.value)
    assert os.strerror(errno.ENOSPC) in said and "could not write it" in said
    if out == "frames":  # the frame that failed is named, and was not left behind
        assert said.startswith(str(target / "frame_00001.png")) and os.listdir(target) == ["frame_00000.png"]
    else:
        assert said.startswith(str(target)) and os.listdir(tmp_path) == [out]
        assert target.read_bytes() == b"an earlier video"


def test_a_failed_mp4_encode_is_an_error_not_a_broken_file(tmp_path, monkeypatch):
    """ffmpeg's exit status is checked (imageio-ffmpeg's own writer does not): an encoder that fails
    (here: Python, which refuses ffmpeg's arguments) names the file, says ffmpeg's last words, and
    leaves nothing."""
    import wanvideo_vae.media as media
    from wanvideo_vae import WanVAEError
    monkeypatch.setattr(media, "_ffmpeg_exe", lambda: sys.executable)
    monkeypatch.setattr(media, "have_mp4", lambda: True)
    with pytest.raises(WanVAEError, match=r"v\.mp4: could not write it \(ffmpeg failed: .+\)"):
        media.write_frames(np.zeros((3, 8, 8, 3), np.float32), str(tmp_path / "v.mp4"), 16)
    assert os.listdir(tmp_path) == []


def test_an_interrupted_mp4_encode_leaves_no_ffmpeg_pipe_or_file(tmp_path, monkeypatch):
    """Ctrl-C (or a cancelled ComfyUI prompt) while frames are fed to ffmpeg: ffmpeg is ended and waited
    for, its stdin pipe closed (not left to the garbage collector: a ResourceWarning, an error in this
    suite), and nothing is left in the folder."""
    pytest.importorskip("imageio_ffmpeg")
    started = []
    real_popen = subprocess.Popen

    def popen(cmd, *a, **k):
        proc = real_popen(cmd, *a, **k)
        if "rawvideo" in cmd:  # the encode, not a probe of ffmpeg's version
            started.append(proc)
        return proc

    def interrupted(frames):
        yield media.to_uint8(frames[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(media.subprocess, "Popen", popen)
    monkeypatch.setattr(media, "_uint8_frames", interrupted)
    with pytest.raises(KeyboardInterrupt):
        media.write_frames(np.zeros((3, 8, 8, 3), np.float32), str(tmp_path / "v.mp4"), 16)
    (proc,) = started
    assert proc.returncode is not None and proc.stdin.closed
    assert os.listdir(tmp_path) == []


def test_mp4_output(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    from wanvideo_vae.media import write_frames
    frames = np.random.default_rng(1).random((5, 17, 23, 3), dtype=np.float32)  # odd sizes: padded to even
    write_frames(frames, str(tmp_path / "v.mp4"), 12.5)
    raw = (tmp_path / "v.mp4").read_bytes()
    assert raw[4:8] == b"ftyp" and b"avc1" in raw and os.listdir(tmp_path) == ["v.mp4"]


def test_png_folder_keeps_this_videos_frames_alone(tmp_path):
    from wanvideo_vae.media import write_frames
    write_frames(np.zeros((5, 8, 8, 3), np.float32), str(tmp_path / "f"), 16)
    (tmp_path / "f" / "notes.txt").write_text("mine")
    write_frames(np.ones((3, 8, 8, 3), np.float32), str(tmp_path / "f"), 16)
    assert sorted(os.listdir(tmp_path / "f")) == ["frame_00000.png", "frame_00001.png", "frame_00002.png", "notes.txt"]


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "is a folder, not a file"),
    (lambda p: p.write_bytes(b"not an array at all"), "not a NumPy array file"),
    (lambda p: np.save(p, np.array([{}], dtype=object), allow_pickle=True), "holds Python objects, not an array"),
])
def test_latents_files_that_are_not_arrays(files, tmp_path, capsys, make, message):
    make(tmp_path / "l.npy")
    code = main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(tmp_path / "l.npy"), "--out",
                 str(tmp_path / "o.npy"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err


@needs_torch
def test_a_pickle_that_is_not_tensors_is_refused_in_a_line(files, tmp_path, capsys):
    import pickle
    with open(tmp_path / "l.pt", "wb") as f:
        pickle.dump(np.zeros(3), f)
    code = main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(tmp_path / "l.pt"), "--out",
                 str(tmp_path / "o.npy"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "holds Python objects other than tensors" in err


@needs_torch
@pytest.mark.parametrize("held,kind", [(lambda t: [t.bfloat16()], " list"), (lambda t: {"samples": [t]}, " list"),
                                       (lambda t: 3, "n int")])
def test_a_pt_file_of_something_else_than_a_tensor_is_refused_in_a_line(files, tmp_path, capsys, held, kind):
    lat = torch.from_numpy(np.load(files / "lat.npy"))
    torch.save(held(lat), tmp_path / "l.pt")
    code = main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(tmp_path / "l.pt"), "--out",
                 str(tmp_path / "o.npy"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"holds a{kind}, not a tensor of latents" in err


def test_a_cpu_decode_does_not_load_the_cuda_libraries(files, tmp_path):
    """--device cpu never asks for the CUDA backend: loading cuDNN and cuBLAS costs 200+ MiB of RAM."""
    code = ("import sys; from wanvideo_vae.cli import main; "
            f"assert main(['decode', '--vae', {str(files / 'vae.safetensors')!r}, '--latents', "
            f"{str(files / 'lat.npy')!r}, '--out', {str(tmp_path / 'o.npy')!r}, '--device', 'cpu', '--quiet']) == 0; "
            "print('wanvideo_vae._cuda' in sys.modules)")
    package_parent = os.path.dirname(os.path.dirname(__import__("wanvideo_vae").__file__))  # the one tested here
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": package_parent})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_random_run_options_beside_files_are_refused(files, capsys):
    for extra in (["--seed", "3"], ["--random-shape", "1", "2", "2"]):
        assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy")] + extra) == 2
        assert "for the run without --vae and --latents" in capsys.readouterr().err


# ---- what the writers and options produce --------------------------------------------------------

def read_png(data):
    """An RGB8 PNG as written by png_bytes -> uint8 [H, W, 3]."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    w = h = None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def avi_chunk(raw, tag):
    at = raw.index(tag)
    (n,) = struct.unpack_from("<I", raw, at + 4)
    return raw[at + 8:at + 8 + n]


def test_latents_file_of_several_unnamed_tensors_is_refused(tmp_path):
    write_safetensors(tmp_path / "l.safetensors", {"a": np.zeros((16, 1, 2, 2), np.float32),
                                                   "b": np.ones((16, 1, 2, 2), np.float32)})
    with pytest.raises(WanVAEError, match="holds 2 tensors"):
        media.load_latents(tmp_path / "l.safetensors")
    write_safetensors(tmp_path / "none.safetensors", {})
    with pytest.raises(WanVAEError, match=r"holds no tensors \(latents expected, named 'samples' or 'latents'\)$"):
        media.load_latents(tmp_path / "none.safetensors")


def test_an_avi_past_4_gib_is_refused_before_writing():
    with pytest.raises(WanVAEError, match=r"^out\.avi: 1 frame of 40000 x 40000 makes a 4\.5 GiB uncompressed \.avi, "
                                          r"past the format's 4 GiB; write \.mp4, a PNG folder or \.npy$"):
        media.check_avi_size(1, 40000, 40000, "out.avi")
    with pytest.raises(WanVAEError, match=r"^the \.avi: 3 frames of 30000 x 30000 make a 7\.5 GiB"):
        media.check_avi_size(3, 30000, 30000)
    media.check_avi_size(3, 720, 1280)  # well within


def test_to_uint8_rounds_to_nearest():
    assert media.to_uint8(np.float32([0.0, 0.5, 0.999, 1.5, -1.0])).tolist() == [0, 128, 255, 255, 0]
    frames = np.uint8([[0, 7, 255]])
    assert media.to_uint8(frames) is frames  # a uint8 decode's frames: already bytes


def test_png_bytes_round_trip_non_square():
    img = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_png(media.png_bytes(img)), img)


def test_avi_pixels_are_bottom_up_bgr_and_timed_by_fps(tmp_path):
    frame = np.zeros((1, 2, 2, 3), np.float32)
    frame[0, 0, :, 0] = 1.0  # top row red
    frame[0, 1, :, 2] = 1.0  # bottom row blue
    media.write_avi(frame, tmp_path / "v.avi", 12.5)
    raw = (tmp_path / "v.avi").read_bytes()
    px = avi_chunk(raw, b"00db")
    assert px[:3] == b"\xff\x00\x00"  # first stored row: the bottom one (blue), as B, G, R
    assert px[8:11] == b"\x00\x00\xff"  # second row (rows padded to 8 bytes): the top one (red)
    assert struct.unpack_from("<I", avi_chunk(raw, b"avih"))[0] == 80000  # microseconds per frame


def read_mp4(path):
    """(metadata, frames as bytes) of a video, by imageio-ffmpeg, whose reader leaves its ffmpeg's pipes
    to the garbage collector even when read to the end (a ResourceWarning, an error in this suite: not ours)."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        reader = imageio_ffmpeg.read_frames(str(path))
        meta, frames = next(reader), list(reader)
        del reader
        gc.collect()
    return meta, frames


def test_mp4_frame_rate_is_the_fps_given(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    media.write_frames(np.zeros((4, 16, 16, 3), np.float32), str(tmp_path / "v.mp4"), 12.5)
    assert read_mp4(tmp_path / "v.mp4")[0]["fps"] == 12.5


def test_contact_sheet_cells_hold_their_frames(tmp_path):
    frames = np.repeat(np.linspace(0, 1, 8, dtype=np.float32)[:, None, None, None], 4, 1).repeat(4, 2).repeat(3, 3)
    media.contact_sheet(frames, str(tmp_path / "s.png"), columns=3)
    sheet = read_png((tmp_path / "s.png").read_bytes())
    assert sheet.shape == (3 * 8 + 4, 3 * 8 + 4, 3)
    for i, v in enumerate(media.to_uint8(frames[:, 0, 0, 0])):
        y, x = 4 + (i // 3) * 8, 4 + (i % 3) * 8
        assert (sheet[y:y + 4, x:x + 4] == v).all(), i


def test_an_output_that_cannot_be_overwritten_is_refused_before_decoding(tmp_path, monkeypatch):
    import errno
    real_open = open

    def locked(path, mode="r", *a, **k):
        if os.fspath(path) == str(tmp_path / "o.npy") and mode == "ab":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, mode, *a, **k)

    (tmp_path / "o.npy").write_bytes(b"old")
    monkeypatch.setattr(atomic, "open", locked, raising=False)
    with pytest.raises(WanVAEError, match="cannot be overwritten"):
        media.check_output(str(tmp_path / "o.npy"))


def test_a_failed_mp4_names_the_output_not_its_temporary_file(tmp_path, monkeypatch):
    script = tmp_path / "ffmpeg.py"
    script.write_text("import sys; sys.stdin.read(); print('cannot write ' + sys.argv[-1], file=sys.stderr); sys.exit(1)")
    monkeypatch.setattr(media, "_ffmpeg_exe", lambda: sys.executable)
    real_popen = media.subprocess.Popen
    monkeypatch.setattr(media.subprocess, "Popen", lambda cmd, **kw: real_popen([cmd[0], str(script)] + cmd[1:], **kw))
    monkeypatch.setattr(media, "have_mp4", lambda: True)
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    with pytest.raises(WanVAEError) as e:
        media.write_frames(np.zeros((2, 8, 8, 3), np.float32), str(out), 16)
    assert "cannot write the output" in str(e.value) and ".part" not in str(e.value)


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    from wanvideo_vae.atomic import write_atomically

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(tmp_path / "v.avi"), write)
    assert os.listdir(tmp_path) == []


def test_normalize_frames_default_clamps_and_minmax_of_a_constant_is_zero():
    from wanvideo_vae.api import normalize_frames
    np.testing.assert_array_equal(normalize_frames(np.float32([-3, -1, 0, 1, 3])), [0, 0, 0.5, 1, 1])
    assert (normalize_frames(np.full((2, 2, 2, 3), 0.3, np.float32), "minmax") == 0).all()


@pytest.mark.parametrize("mode", ["default", "minmax", "none"])
def test_normalize_frames_leaves_the_callers_array_unless_inplace(mode):
    from wanvideo_vae.api import normalize_frames
    raw = np.float32([-3, -1, 0, 0.5, 3])
    kept = raw.copy()
    out = normalize_frames(raw, mode)
    np.testing.assert_array_equal(raw, kept)
    assert out is not raw
    inplace = normalize_frames(raw, mode, inplace=True)
    assert inplace is raw and np.array_equal(raw, out)


def test_cli_npy_default_output_is_in_the_unit_range(files, tmp_path):
    import wanvideo_vae as wv
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet"]
    assert main(base + ["--out", str(tmp_path / "d.npy")]) == 0
    raw = wv.Decoder(wv.load_weights(files / "vae.safetensors")).decode(np.load(files / "lat.npy"), raw=True)
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), (np.clip(raw, -1, 1) + 1) / 2, atol=1e-6)


def test_end_frame_avi_size_check_counts_the_written_frames(files, tmp_path, monkeypatch):
    base = ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet",
            "--end-frame"]
    assert main(base + ["--out", str(tmp_path / "e.npy")]) == 0
    n, h, w, _ = np.load(tmp_path / "e.npy").shape
    monkeypatch.setattr(media, "AVI_MAX_BYTES", media._avi_file_bytes(n, h, w))  # exactly the video written
    assert main(base + ["--out", str(tmp_path / "e.avi")]) == 0


def test_cli_fps_reaches_the_video(files, tmp_path):
    assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet",
                 "--out", str(tmp_path / "v.avi"), "--fps", "12.5"]) == 0
    strh = avi_chunk((tmp_path / "v.avi").read_bytes(), b"strh")
    assert struct.unpack_from("<II", strh, 20) == (2, 25)


def test_random_run_seed_changes_the_output(tmp_path, capsys):
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"s{seed}.npy"
        assert main(["decode", "--random-shape", "1", "2", "2", "--seed", seed, "--out", str(out), "--quiet"]) == 0
        outs.append(np.load(out))
    assert not np.array_equal(outs[0], outs[1])


def test_an_interrupt_exits_130(monkeypatch, capsys):
    import wanvideo_vae.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "decode_cmd", interrupted)
    assert main(["decode"]) == 130 and "interrupted" in capsys.readouterr().err


def test_windows_memory_figures(monkeypatch):
    """Windows: the host budget is what may still be committed (a small page file makes that less than
    the free RAM), and bench's RSS figures are the working set (K32GetProcessMemoryInfo), not "n/a"."""
    import ctypes
    from wanvideo_vae import cli, sysmem

    class Kernel32:
        @staticmethod
        def GlobalMemoryStatusEx(ref):
            status = ref._obj
            assert status.dwLength == ctypes.sizeof(status)  # 64 bytes on Windows (c_ulong: 32 bits)
            status.ullAvailPhys, status.ullAvailPageFile = 12 << 30, 5 << 30
            return 1

        @staticmethod
        def K32GetProcessMemoryInfo(process, ref, size):
            counters = ref._obj
            assert process.value == ctypes.c_void_p(-1).value and size.value == counters.cb == ctypes.sizeof(counters)
            counters.WorkingSetSize, counters.PeakWorkingSetSize = 300 << 20, 700 << 20
            return 1

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "windll", type("WinDLL", (), {"kernel32": Kernel32})(), raising=False)
    assert sysmem.available_host_bytes() == 5 << 30
    assert cli.current_rss_bytes() == 300 << 20 and cli.peak_rss_bytes() == 700 << 20


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and symbolic links")
def test_a_file_replaced_keeps_its_permissions_and_a_link_to_it_stays_a_link(tmp_path):
    """write_atomically (patch-workflow in place, the decode's outputs): where `path` is a symbolic link, the
    file it leads to is replaced and the link stays (the link was replaced by a new file, the file it led to
    left as it was); a file replaced keeps its permissions (a new file took the umask's: a private workflow
    became readable to others)."""
    (tmp_path / "sub").mkdir()
    real, link = tmp_path / "sub" / "real.txt", tmp_path / "link.txt"
    real.write_text("old", "utf-8")
    os.chmod(real, 0o640)
    os.symlink(os.path.join("sub", "real.txt"), link)
    atomic.write_atomically(str(link), lambda tmp: pathlib.Path(tmp).write_text("new", "utf-8"))
    assert os.path.islink(link) and real.read_text("utf-8") == "new"
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.txt", "sub"] and os.listdir(tmp_path / "sub") == ["real.txt"]
    atomic.check_target(str(link))  # checked where it is written
    new = tmp_path / "new.txt"
    atomic.write_atomically(str(new), lambda tmp: pathlib.Path(tmp).write_text("x", "utf-8"))
    assert new.read_text("utf-8") == "x"


def test_a_file_replaced_while_windows_holds_it_is_tried_again(tmp_path, monkeypatch):
    """Windows refuses a rename over a file a player has open, or of one a scanner is reading, for a
    moment: tried again (a few seconds at most); elsewhere, and at the last try, the error stands."""
    from wanvideo_vae import atomic
    real_replace, refusals = os.replace, []

    def refused_twice(src, dst):
        if len(refusals) < 2:
            refusals.append(dst)
            raise PermissionError(13, "The process cannot access the file")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refused_twice)
    monkeypatch.setattr(atomic.time, "sleep", lambda s: None)
    monkeypatch.setattr(sys, "platform", "win32")
    atomic.write_atomically(str(tmp_path / "out.txt"), lambda tmp: pathlib.Path(tmp).write_text("ok", "utf-8"))
    assert (tmp_path / "out.txt").read_text() == "ok" and len(refusals) == 2
    refusals.clear()
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(OSError, match="cannot access"):
        atomic.write_atomically(str(tmp_path / "other.txt"), lambda tmp: pathlib.Path(tmp).write_text("x", "utf-8"))
    assert len(refusals) == 1 and sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_paths_the_console_cannot_show_are_printed_escaped(tmp_path):
    """A console whose code page lacks a path's letters (Windows' cp1252 for a Chinese folder) gets them
    escaped, not a UnicodeEncodeError after the work is done."""
    src = tmp_path / "工作流" / "in.json"
    src.parent.mkdir()
    src.write_text(json.dumps({"1": {"class_type": "WanVideoVAELoader", "inputs": {}},
                               "2": {"class_type": "WanVideoDecode", "inputs": {"vae": ["1", 0]}}}), encoding="utf-8")
    env = dict(os.environ, PYTHONIOENCODING="ascii", PYTHONPATH=package_root())
    r = subprocess.run([sys.executable, "-m", "wanvideo_vae", "patch-workflow", str(src), str(src.parent / "out.json")],
                       capture_output=True, text=True, encoding="ascii", env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "\\u5de5\\u4f5c\\u6d41" in r.stdout and "1 WanVideoDecode node(s) now use" in r.stdout


def test_mp4_of_odd_height_keeps_its_rows_and_columns(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    frames = np.zeros((3, 17, 32, 3), np.float32)  # 17 rows: one edge row repeated; 32 columns kept
    frames[:, :, :16, 0] = 1.0  # left half red
    media.write_frames(frames, str(tmp_path / "v.mp4"), 16)
    meta, read = read_mp4(tmp_path / "v.mp4")
    assert meta["size"] == (32, 18) and len(read) == 3  # width, height
    for raw in read:
        img = np.frombuffer(raw, np.uint8).reshape(18, 32, 3).astype(int)
        assert (img[:, :12, 0] > 200).all() and (img[:, :12, 1:] < 60).all()  # H.264 blurs the edge between
        assert (img[:, 20:] < 60).all()


def test_avi_headers_give_width_then_height(tmp_path):
    media.write_avi(np.zeros((2, 3, 5, 3), np.float32), tmp_path / "v.avi", 16)  # 3 rows of 5 pixels
    raw = (tmp_path / "v.avi").read_bytes()
    assert struct.unpack_from("<Iii", avi_chunk(raw, b"strf")) == (40, 5, 3)  # BITMAPINFOHEADER
    assert struct.unpack_from("<II", avi_chunk(raw, b"avih"), 32) == (5, 3)  # dwWidth, dwHeight
    assert struct.unpack_from("<hhhh", avi_chunk(raw, b"strh"), 48) == (0, 0, 5, 3)  # rcFrame
    assert len(avi_chunk(raw, b"00db")) == 3 * 16  # rows of 15 bytes padded to 16


def test_latents_file_of_one_tensor_under_any_name(tmp_path):
    lat = random_latents(16, 1, 2, 3, seed=7)
    write_safetensors(tmp_path / "l.safetensors", {"z": lat})
    np.testing.assert_array_equal(media.load_latents(tmp_path / "l.safetensors"), lat)


@pytest.mark.parametrize("text,size", [("4G", 4 << 30), ("512m", 512 << 20), ("1.5k", 1536), ("100", 100),
                                       ("4GB", 4 << 30), ("4 GiB", 4 << 30), ("64MiB", 64 << 20), ("2t", 2 << 40),
                                       ("100b", 100), ("1e3K", 1000 << 10)])
def test_max_memory_units_are_binary(text, size):
    from wanvideo_vae.cli import _positive_bytes
    assert _positive_bytes(text) == size


@pytest.mark.parametrize("text", ["G", "4GBs", "4 G B", "four", "4x", ""])
def test_max_memory_that_is_no_size_is_refused(capsys, text):
    with pytest.raises(SystemExit) as e:
        main(["decode", "--max-memory", text])
    assert e.value.code == 2 and f"argument --max-memory: not a size in bytes: {text!r}" in capsys.readouterr().err


def test_a_mistyped_command_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bnech", "--shape", "1", "2", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid command: 'bnech' (choose from decode, bench, patch-workflow" in err


def test_max_memory_reaches_the_decode(files, tmp_path, monkeypatch):
    from wanvideo_vae import cli
    seen, real = [], cli.Decoder.decode

    def spy(self, latents, **kw):
        seen.append(kw.get("max_memory"))
        return real(self, latents, **kw)

    monkeypatch.setattr(cli.Decoder, "decode", spy)
    assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"),
                 "--max-memory", "64M", "--out", str(tmp_path / "v.npy"), "--quiet"]) == 0
    assert seen == [64 << 20]


def test_a_budget_too_small_names_the_least_as_the_option_to_pass(files, tmp_path, capsys):
    assert main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"),
                 "--max-memory", "1K", "--out", str(tmp_path / "v.npy"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the decode needs ") and "\n" not in err
    least = re.search(r"\. Pass --max-memory (\d+) or more\.$", err)
    assert least and main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"),
                           "--max-memory", least.group(1), "--out", str(tmp_path / "v.npy"), "--quiet"]) == 0


@pytest.mark.parametrize("backend,shape", [("cpu", "DEFAULT_RANDOM_SHAPE"), ("cuda", "GPU_RANDOM_SHAPE")])
def test_random_run_size_follows_the_backend(monkeypatch, backend, shape):
    import argparse
    from wanvideo_vae import cli
    monkeypatch.setattr(cli, "random_weights", lambda *a, **k: {})  # the full-size decoder's weights: not needed
    args = argparse.Namespace(vae=None, latents=None, random_shape=None, seed=None)
    _, latents, source = cli._inputs(args, backend)
    assert latents.shape == (16,) + getattr(cli, shape) and source == "random"


def test_info_reports_this_installation_and_plans_a_decode(capsys):
    """info's lines say what backends() says, and its CPU plan is the one a Decoder makes of that shape."""
    import wanvideo_vae as wv
    from wanvideo_vae import info
    assert main(["info", "--shape", "2", "8", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    feats = wv.backends()
    assert report["wanvideo_vae"]["version"] == wv.__version__
    assert report["latents"] == [16, 2, 8, 8]
    assert report["backends"]["cpu"]["threads"] == feats["cpu"]["threads"]
    assert report["backends"]["cuda"]["usable"] == feats["cuda"]["usable"]
    cpu = [row for row in report["plans"] if row["backend"] == "cpu"]
    want = wv.Decoder(info._zero_weights()).plan(2, 8, 8, enable_vae_tiling=False)
    assert len(cpu) == 1 and cpu[0]["precision"] == "fp32"
    assert cpu[0]["arena_bytes"] == want["planned_bytes"] and cpu[0]["weight_bytes"] == want["weight_bytes"]
    assert cpu[0]["tiles"] == [1, 1] and cpu[0]["frames"] == 5 and cpu[0]["size"] == [64, 64]
    assert main(["info", "--shape", "2", "8", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wanvideo_vae {wv.__version__} (")
    assert any(line.startswith(f"CPU backend: usable, {feats['cpu']['threads']} threads; ") for line in lines)
    cuda_lines = [line for line in lines if line.startswith("CUDA backend: ")]
    assert len(cuda_lines) == 1
    if not feats["cuda"]["usable"]:
        assert f"not usable: {feats['cuda']['reason']}" in "\n".join(lines)
    assert "a decode of latents [16, 2, 8, 8] (5 frames of 64x64), full-size weights, in the memory free now:" in lines
    assert main(["info", "--shape", "1", "8", "8"]) == 0
    assert "a decode of latents [16, 1, 8, 8] (1 frame of 64x64), full-size weights, in the memory free now:" in \
        capsys.readouterr().out.splitlines()
    assert (f"  cpu fp32: untiled; working memory {want['planned_bytes'] / 2**20:.0f} MiB + weights "
            f"{want['weight_bytes'] / 2**20:.0f} MiB; {want['conv_flops'] / 1e9:.1f} GFLOP of convolutions") in lines
    assert main(["info", "--no-plan", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plans"] == []


def test_info_says_why_a_decode_does_not_fit(capsys):
    """A shape no budget of this machine takes: the plan's row is the MemoryError's words."""
    assert main(["info", "--shape", "2", "4096", "4096", "--json"]) == 0
    row = [r for r in json.loads(capsys.readouterr().out)["plans"] if r["backend"] == "cpu"][0]
    assert row["error"].startswith("the decode needs ") and "the least it can take is " in row["error"]
    assert "arena_bytes" not in row


def test_info_lines_of_gpus_and_their_plans():
    """The lines of what only a machine with GPUs reports: one with code, one without, one unreadable."""
    from wanvideo_vae import info
    report = {
        "wanvideo_vae": {"version": "9.9", "path": "/site/wanvideo_vae"}, "python": "3.12.3", "platform": "Linux",
        "numpy": "2.5.2", "torch": {"version": "2.11.0", "cuda": "13.0", "cuda_available": True},
        "host_memory_available": 64 << 30, "latents": [16, 21, 90, 160],
        "backends": {"cpu": {"usable": True, "threads": 16, "blas": "OpenBLAS"},
                     "cuda": {"usable": True, "devices": 3, "reason": "", "archs": "8.0, 9.0", "build_warnings": ["w"],
                              "versions": {"cuda_runtime": 13000, "cuda_driver": 13010, "cudnn": 92801,
                                           "cublas": 131000}}},
        "gpus": [{"index": 0, "name": "NVIDIA H200", "capability": [9, 0], "multiprocessors": 132,
                  "total_memory": 140 << 30, "free_memory": 139 << 30, "has_code": True, "code_missing": ""},
                 {"index": 1, "name": "Tesla P100", "capability": [6, 0], "multiprocessors": 56,
                  "total_memory": 16 << 30, "free_memory": None, "memory_error": "cannot read: busy",
                  "has_code": False, "code_missing": "no code: x"},
                 {"index": 2, "error": "cannot read the properties of CUDA device 2: lost"}],
        "plans": [{"backend": "cuda", "device": 0, "precision": "bf16", "tiles": [2, 2], "tile_px": [654, 374],
                   "arena_bytes": 1828 << 20, "weight_bytes": 142 << 20, "trunk_host_bytes": 221 << 20,
                   "conv_flops": 657.6e12},
                  {"backend": "cpu", "device": -1, "precision": "fp32", "error": "the decode needs more"}],
    }
    assert info.format_report(report) == [
        "wanvideo_vae 9.9 (/site/wanvideo_vae)",
        "Python 3.12.3 on Linux; NumPy 2.5.2; PyTorch 2.11.0 (CUDA 13.0, a GPU seen)",
        "host memory available: 64.0 GiB",
        "CPU backend: usable, 16 threads; OpenBLAS",
        "CUDA backend: built for compute capability 8.0, 9.0; CUDA runtime 13.0, driver 13.1, cuDNN 9.28.1, "
        "cuBLAS 13.10.0",
        "  usable: 3 GPUs",
        "  build warning: w",
        "GPU 0: NVIDIA H200, compute capability 9.0, 132 multiprocessors, 139.0 GiB free of 140.0 GiB; this build "
        "runs there",
        "GPU 1: Tesla P100, compute capability 6.0, 56 multiprocessors, 16.0 GiB, free unknown (cannot read: busy); "
        "no code: x",
        "GPU 2: cannot read the properties of CUDA device 2: lost",
        "a decode of latents [16, 21, 90, 160] (81 frames of 1280x720), full-size weights, in the memory free now:",
        "  cuda:0 bf16: in 2x2 tiles of 654x374 px; working memory 1828 MiB + weights 142 MiB, trunk output 221 MiB "
        "on the host; 658 TFLOP of convolutions",
        "  cpu fp32: the decode needs more",
    ]
    report["torch"], report["backends"]["cuda"] = None, {"usable": False, "reason": "not built: no nvcc"}
    report["gpus"], report["plans"] = [], []
    lines = info.format_report(report)
    assert lines[1].endswith("; PyTorch not installed") and lines[-1] == "CUDA backend: not usable: not built: no nvcc"
    report["torch"] = {"version": None, "error": "OSError: libtorch_cuda.so: cannot open"}
    assert info.format_report(report)[1].endswith("; PyTorch does not import (OSError: libtorch_cuda.so: cannot open)")


def test_the_gpus_capability_is_read_by_our_backend_not_torch(monkeypatch):
    """--precision auto is bf16 from compute capability 8.0 on. Read by our backend, so that a torch
    without CUDA (a CPU build, as here) cannot make a Turing GPU's decode bf16, which the backend then
    refuses; where the backend cannot say (not loadable, no device), a recent GPU is assumed and the
    decode says what is wrong."""
    from wanvideo_vae import devices
    asked = stand_in_cuda_backend(monkeypatch, lambda index: (7, 5), current=1)
    assert devices.precision_for("bf16", -1) == "fp32" and devices.precision_for("bf16", 3) == "fp32"
    assert asked == [1, 3] and devices.precision_for("fp16", 3) == "fp16"

    def no_device(index):
        raise RuntimeError("no NVIDIA driver found")

    stand_in_cuda_backend(monkeypatch, no_device)
    assert devices.compute_capability(0) == (9, 0)
    monkeypatch.setattr(devices, "cuda_module", lambda: None)
    assert devices.compute_capability(0) == (9, 0)


# ---- outputs: what the check before the decode sees, and what an interrupted write leaves --------

def _decode_args(files, out, *more):
    return ["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(files / "lat.npy"), "--quiet",
            "--out", str(out), *more]


@pytest.mark.skipif(sys.platform == "win32", reason="the whole path would pass Windows' MAX_PATH (260)")
@pytest.mark.parametrize("suffix", [".npy", ".avi"])
def test_an_output_name_as_long_as_a_folder_takes_is_written(files, tmp_path, suffix):
    """The temporary file's name is shortened to fit: a 255-byte output name (the most a folder takes)
    was refused only after the decode, its temporary name 15 bytes longer."""
    out = tmp_path / ("v" * (255 - len(suffix)) + suffix)
    assert main(_decode_args(files, out)) == 0
    assert sorted(os.listdir(tmp_path)) == [out.name]


def test_an_output_name_longer_than_a_folder_takes_is_refused_before_decoding(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("wanvideo_vae.Decoder.decode", lambda *a, **k: pytest.fail("decoded"))
    assert main(_decode_args(files, tmp_path / ("v" * 252 + ".npy"))) == 2
    unit = "characters" if sys.platform == "win32" else "bytes"
    assert f"the name is longer than a folder takes (255 {unit})" in capsys.readouterr().err


def test_a_name_is_measured_as_the_file_system_counts_it(monkeypatch):
    """255 bytes on Linux and macOS, 255 UTF-16 units on Windows: a CJK name of 95 characters (275 bytes of
    UTF-8) fits Windows, where it was measured in UTF-8 (os.fsencode's there) and refused."""
    name = "\u5de5\u4f5c\u6d41" * 30 + ".json"
    monkeypatch.setattr(sys, "platform", "win32")
    assert atomic.name_length(name) == 95 and atomic.name_length("\U0001f600") == 2
    assert len(os.path.basename(atomic.temp_path("x" * 250 + ".json"))) == 255  # shortened to fit
    monkeypatch.setattr(sys, "platform", "linux")
    assert atomic.name_length(name) == 275


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX device nodes and named pipes")
def test_a_device_or_a_pipe_as_output_is_refused_not_replaced(files, tmp_path, capsys, monkeypatch):
    """os.replace would put a regular file where /dev/full was (as root it did); opening a named pipe
    to check it waited for a reader for ever."""
    from wanvideo_vae.cli import main as cli_main
    monkeypatch.setattr("wanvideo_vae.Decoder.decode", lambda *a, **k: pytest.fail("decoded"))
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    assert main(_decode_args(files, fifo)) == 2
    assert "pipe.npy: is not a regular file (a device or a pipe)" in capsys.readouterr().err
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"1": {"class_type": "WanVideoDecode", "inputs": {}}}))
    assert cli_main(["patch-workflow", str(wf), "/dev/null"]) == 2
    assert "/dev/null: is not a regular file" in capsys.readouterr().err
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    with pytest.raises(WanVAEError, match="^/dev/null: is not a regular file"):
        media.check_file_target("/dev/null")


def test_a_folder_that_takes_no_new_file_is_refused_though_the_output_opens(tmp_path, monkeypatch):
    """A writable file in a read-only folder: it opens for appending, but its replacement cannot be
    made beside it (tried with the temporary name itself)."""
    import errno
    (tmp_path / "o.npy").write_bytes(b"old")
    real_open = open

    def read_only_folder(path, mode="r", *a, **k):
        if "x" in mode:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(atomic, "open", read_only_folder, raising=False)
    with pytest.raises(WanVAEError, match=r"o\.npy: the folder .* does not take a new file"):
        media.check_output(str(tmp_path / "o.npy"))
    assert (tmp_path / "o.npy").read_bytes() == b"old"


def test_an_ffmpeg_named_by_imageio_ffmpeg_exe_must_exist(tmp_path, monkeypatch):
    pytest.importorskip("imageio_ffmpeg")
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-ffmpeg"))
    assert not media.have_mp4()
    with pytest.raises(WanVAEError, match="no-ffmpeg.* is not a program that can run here"):
        media.check_output(str(tmp_path / "v.mp4"))


def test_a_png_folder_write_failing_midway_leaves_no_earlier_video_frames(tmp_path, monkeypatch):
    """Frames 0..k-1 new and k.. of the earlier video would be one video to whoever reads the folder."""
    folder = tmp_path / "pngs"
    media.write_png_dir(np.zeros((5, 4, 4, 3), np.float32), str(folder))
    real, calls = media._write_bytes, []

    def fails_at_the_third(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(media, "_write_bytes", fails_at_the_third)
    with pytest.raises(OSError):
        media.write_png_dir(np.ones((4, 4, 4, 3), np.float32), str(folder))
    assert sorted(os.listdir(folder)) == ["frame_00000.png", "frame_00001.png"]
    assert all(media.png_bytes(np.full((4, 4, 3), 255, np.uint8)) == (folder / n).read_bytes()
               for n in os.listdir(folder))


def test_the_output_may_replace_no_input_nor_hold_the_contact_sheet(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("wanvideo_vae.Decoder.decode", lambda *a, **k: pytest.fail("decoded"))
    lat = tmp_path / "lat.npy"
    lat.write_bytes((files / "lat.npy").read_bytes())
    os.link(lat, tmp_path / "other-name.npy")
    for out in (lat, tmp_path / "other-name.npy"):
        code = main(["decode", "--vae", str(files / "vae.safetensors"), "--latents", str(lat), "--out", str(out)])
        assert code == 2 and "is the --latents file; write the output to another name" in capsys.readouterr().err
    assert lat.read_bytes() == (files / "lat.npy").read_bytes()
    for sheet in (tmp_path / "pngs" / "sheet.png", tmp_path / "pngs" / "." / "sheet.png"):
        assert main(_decode_args(files, tmp_path / "pngs", "--contact-sheet", str(sheet))) == 2
        assert "is inside the PNG frames' folder" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill(pid, SIGTERM) ends a Windows process outright")
@pytest.mark.parametrize("when", ["decoding", "writing"])
def test_sigterm_stops_the_cli_as_ctrl_c_does(files, tmp_path, capsys, monkeypatch, when):
    """A stopping signal, while decoding or writing: exit status 128 + 15, no temporary file left; the
    handler is the default again afterwards."""
    import signal
    import wanvideo_vae.cli as cli
    term = lambda *a: os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
    if when == "decoding":
        monkeypatch.setattr(cli, "progress_bar", lambda enabled: (lambda done, total: term(), lambda: None))
    else:
        real = atomic.write_atomically
        monkeypatch.setattr(media, "write_atomically", lambda path, write: real(path, lambda tmp: (write(tmp), term())))
    out = tmp_path / "v.npy"
    assert main(_decode_args(files, out)) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "stopped by SIGTERM"
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
