"""The ComfyUI node pack: loading, input specs, WanVideoDecode semantics, the WANVAE patch, Gradio."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import (REPO, load_fixture, load_install_script, package_root, random_latents,  # noqa: E402
                     random_weights, stand_in_cuda_backend)
from standin_wanvae import StandInWanVAE  # noqa: E402
from wanvideo_vae.comfy_nodes import (NODE_CLASS_MAPPINGS, NativeWanVAE, WanCoreVAENativeDecode,  # noqa: E402
                                      WanVideoNativeDecode, WanVideoNativeVAEPatch)
from wanvideo_vae import WanVAEError  # noqa: E402

NODE_TOL = 1e-4


def load_like_comfyui(module_name):
    """ComfyUI's custom node loader: a module from the folder's __init__.py, registered in sys.modules."""
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(REPO, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("module_name", [os.path.join(REPO).replace(".", "_x_"), "wanvideo_vae"])
def test_repo_root_loads_as_custom_node(module_name):
    import wanvideo_vae
    saved = dict(sys.modules)
    try:
        module = load_like_comfyui(module_name)
        assert set(module.NODE_CLASS_MAPPINGS) == set(module.NODE_DISPLAY_NAME_MAPPINGS)
        assert "WanVideoNativeDecode" in module.NODE_CLASS_MAPPINGS
        assert "WanVideoDecode" not in module.NODE_CLASS_MAPPINGS  # never shadows the wrapper's node
        loaded = sys.modules["wanvideo_vae"]
        assert loaded is not module and hasattr(loaded, "decode_tiled")  # the package with its compiled core
        assert os.path.dirname(loaded.__file__) == os.path.dirname(wanvideo_vae.__file__)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)


def clone_in_custom_nodes(tmp_path):
    """custom_nodes/ holding this repository as a clone named after the package (the README's)."""
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    if sys.platform == "win32":  # symbolic links need a privilege there: a copy of what a clone holds
        clone = custom_nodes / "wanvideo_vae"
        shutil.copytree(os.path.join(REPO, "wanvideo_vae"), clone / "wanvideo_vae",
                        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
        shutil.copy(os.path.join(REPO, "__init__.py"), clone / "__init__.py")
    else:
        os.symlink(REPO, custom_nodes / "wanvideo_vae")
    return custom_nodes


def load_clone_with_a_fresh_package(custom_nodes, check):
    """Loads the clone as ComfyUI's newer loader does (by path), with no wanvideo_vae imported yet,
    and calls check(module, the package it loaded); sys.modules is restored after."""
    saved = dict(sys.modules)
    try:
        for name in [n for n in sys.modules if n == "wanvideo_vae" or n.startswith("wanvideo_vae.")]:
            del sys.modules[name]
        spec = importlib.util.spec_from_file_location("wanvideo_vae_pack", str(custom_nodes / "wanvideo_vae" / "__init__.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert "WanVideoNativeDecode" in module.NODE_CLASS_MAPPINGS
        check(sys.modules["wanvideo_vae"])
    finally:
        sys.modules.clear()
        sys.modules.update(saved)


def test_clone_named_after_the_package_with_custom_nodes_first_on_the_path(tmp_path, monkeypatch):
    """custom_nodes/wanvideo_vae (the README's clone) with custom_nodes/ first on sys.path: `import
    wanvideo_vae` finds the clone's root, which has no compiled core; the installed package is found past it."""
    custom_nodes = clone_in_custom_nodes(tmp_path)
    sources = tmp_path / "sources"  # another copy of the package's sources, without a compiled core, comes next
    (sources / "wanvideo_vae").mkdir(parents=True)
    (sources / "wanvideo_vae" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(sources))
    monkeypatch.syspath_prepend(str(custom_nodes))

    def is_a_compiled_package(loaded):  # not the clone's root
        assert hasattr(loaded, "decode_tiled") and loaded.__file__.endswith(os.path.join("wanvideo_vae", "__init__.py"))
        assert os.path.realpath(loaded.__file__) != os.path.realpath(os.path.join(REPO, "__init__.py"))

    load_clone_with_a_fresh_package(custom_nodes, is_a_compiled_package)


def install_report(reason="no NVIDIA driver found", torch_cuda=None, usable=False, warnings=()):
    """What `python -m wanvideo_vae info --json --no-plan` says, as far as install.py reads it."""
    return {"torch": {"version": "2.11.0", "cuda": torch_cuda, "cuda_available": bool(torch_cuda)},
            "backends": {"cuda": {"usable": usable, "reason": reason, "build_warnings": list(warnings)}}}


def test_install_script_installs_the_package_with_the_running_python(capsys):
    """ComfyUI-Manager and the Comfy Registry run install.py with ComfyUI's Python after fetching the pack."""
    install = load_install_script()
    calls = []
    cpu_only = install_report("not built: skipped (WANVIDEO_CUDA=0)")
    assert install.main(call=lambda command, cwd: calls.append((command, cwd)) or 0,
                        report=lambda: (cpu_only, None)) == 0
    assert calls == [([sys.executable, "-m", "pip", "install", REPO], REPO)]
    assert "wanvideo_vae: installed; CUDA backend: not built: skipped (WANVIDEO_CUDA=0)\n" in capsys.readouterr().out
    assert install.main(call=lambda command, cwd: 1) == 1
    assert "needs a C compiler" in capsys.readouterr().err
    # what this environment's installed package says of itself, from a neutral folder
    state, problem = install.installed_report()
    assert problem is None and "cuda" in state["backends"] and "torch" in state
    install.say_backends(state, problem)
    assert capsys.readouterr().out.startswith("wanvideo_vae: installed; CUDA backend: ")
    state, problem = install.installed_report(run=lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "boom\n"))
    assert state is None and problem == "-m wanvideo_vae info --json --no-plan exited with status 1: boom"
    install.say_backends(state, problem)
    assert "could not say which backends it has (-m wanvideo_vae info" in capsys.readouterr().err


NVCC_MISSING = "not built: nvcc not found (set CUDA_HOME or put nvcc on PATH; ...)"


NVCC_PARTS = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl")


@pytest.mark.parametrize("torch_cuda,wheels", [("13.0", [f"{name}==13.0.*" for name in NVCC_PARTS]),
                                               ("13.2", [f"{name}==13.2.*" for name in NVCC_PARTS]),
                                               ("12.8", None), (None, None)])
def test_install_script_brings_the_nvcc_of_pytorchs_cuda_where_the_build_found_none(torch_cuda, wheels, capsys):
    """No CUDA toolkit beside a PyTorch for CUDA 13 (ComfyUI's usual Linux environment): the first build is
    CPU-only for want of nvcc; install.py installs nvcc, nvvm, crt and CCCL of PyTorch's CUDA from PyPI and
    builds again. Not for CUDA 12 (its nvcc wheel holds no nvcc) or a CPU PyTorch."""
    install = load_install_script()
    reports = [install_report(NVCC_MISSING, torch_cuda), install_report("", torch_cuda, usable=True)]
    calls = []
    assert install.main(call=lambda command, cwd: calls.append(command) or 0, report=lambda: (reports.pop(0), None),
                        linux=True) == 0
    build = [sys.executable, "-m", "pip", "install", REPO]
    said = capsys.readouterr().out
    if wheels is None:
        assert calls == [build] and len(reports) == 1 and "installing nvcc" not in said
        return
    assert calls == [build, [sys.executable, "-m", "pip", "install"] + wheels, build] and not reports
    assert f"PyTorch is built for CUDA {torch_cuda}: installing its nvcc from PyPI" in said
    assert said.endswith("wanvideo_vae: installed; CUDA backend: usable\n")
    assert install.nvcc_wheels(install_report(NVCC_MISSING, torch_cuda), linux=True) == wheels
    assert install.nvcc_wheels(install_report(NVCC_MISSING, torch_cuda), linux=False) is None  # no cuDNN headers


def test_install_script_keeps_the_cpu_only_install_where_nvcc_cannot_be_had(capsys):
    """pip failing to bring nvcc (no network), or the build with it failing: a warning, exit status 0 (the
    CPU-only install works), and no second build without nvcc."""
    install = load_install_script()
    for failing, calls_made, message in ((1, 2, "pip could not install nvcc (exit status 3)"),
                                         (2, 3, "the build with nvcc failed (exit status 3)")):
        calls = []
        assert install.main(call=lambda command, cwd: calls.append(command) or (3 if len(calls) == failing + 1 else 0),
                            report=lambda: (install_report(NVCC_MISSING, "13.0"), None), linux=True) == 0
        assert len(calls) == calls_made
        assert message in capsys.readouterr().err
    # installed, but the build still finds no nvcc (pip put it elsewhere): said, not silently again and again
    calls = []
    assert install.main(call=lambda command, cwd: calls.append(command) or 0,
                        report=lambda: (install_report(NVCC_MISSING, "13.0"), None), linux=True) == 0
    assert len(calls) == 3 and "the build found no nvcc even after pip installed it" in capsys.readouterr().err


def test_install_script_builds_without_isolation_in_an_embeddable_python(tmp_path, capsys):
    """ComfyUI's portable python_embeded has a python3XX._pth, so it ignores PYTHONPATH, through which
    pip's build isolation hands the build its requirements: install.py installs them first (those of
    pyproject.toml) and builds with --no-build-isolation."""
    install = load_install_script()
    embedded = tmp_path / "ComfyUI [portable]" / "python_embeded"
    embedded.mkdir(parents=True)
    assert not install.embedded_python(str(embedded / "python.exe"))
    (embedded / "python312._pth").write_text("python312.zip\n.\nimport site\n")
    assert install.embedded_python(str(embedded / "python.exe")) and not install.embedded_python()
    requires = install.build_requirements()
    assert [r.split(">")[0] for r in requires] == ["setuptools", "numpy", "scipy-openblas32"]
    tomllib = sys.modules.get("tomllib")
    try:
        sys.modules["tomllib"] = None  # Python 3.10's way: its own reading of the list
        assert install.build_requirements() == requires
        pyproject = tmp_path / "pyproject.toml"
        pyproject.write_text('[project]\nname = "x"\n[build-system]\nrequires = [\n  "setuptools>=77",  # "a comment"\n'
                             "  'numpy',\n]\nbuild-backend = \"setuptools.build_meta\"\n")
        assert install.build_requirements(str(pyproject)) == ["setuptools>=77", "numpy"]
    finally:
        if tomllib is None:
            del sys.modules["tomllib"]
        else:
            sys.modules["tomllib"] = tomllib
    # ComfyUI's own packages: a setuptools new enough stays as it is, an older one is not raised past 81 (82
    # removed pkg_resources, which other custom nodes may import)
    assert install.requirements_for_this_python(requires, (80, 9)) == requires[1:]
    assert install.requirements_for_this_python(requires, (84, 2)) == requires[1:]
    assert install.requirements_for_this_python(requires, (69, 5))[0] == "setuptools>=77,<82"
    assert install.requirements_for_this_python(requires, None)[0] == "setuptools>=77,<82"
    assert install.requirements_for_this_python(["setuptools>=90"], (84, 2)) == ["setuptools>=90"]
    calls = []
    nvcc_missing = install_report(NVCC_MISSING, "13.0")
    assert install.main(call=lambda command, cwd: calls.append(command) or 0, embedded=True,
                        report=lambda: (nvcc_missing, None), linux=True) == 0
    assert calls[0] == [sys.executable, "-m", "pip", "install"] + install.requirements_for_this_python(
        requires, install.installed_setuptools())
    assert calls[1] == [sys.executable, "-m", "pip", "install", "--no-build-isolation", REPO]
    assert calls[2][:4] == [sys.executable, "-m", "pip", "install"] and calls[2][4].startswith("nvidia-cuda-nvcc==")
    assert calls[3] == calls[1] and len(calls) == 4  # the build again, as the first (no isolation), with nvcc
    calls.clear()
    assert install.main(call=lambda command, cwd: calls.append(command) or 1, embedded=True) == 1
    assert len(calls) == 1  # no build without its requirements
    said = capsys.readouterr()
    assert "installing the build's requirements: " in said.out and "could not install the build's requirements" in \
        said.err and "C compiler" not in said.err


def test_install_script_says_what_a_portable_python_lacks(tmp_path):
    """ComfyUI's portable Windows Python has no include folder or import library, a Linux Python may lack
    its -dev package: say so, and what to do, before pip fails."""
    install = load_install_script()
    assert install.missing_python_headers() is None  # this Python builds extensions
    problem = install.missing_python_headers({"include": str(tmp_path / "include")}, windows=True, base=str(tmp_path))
    assert "Python.h" in problem and "python%d%d.lib" % sys.version_info[:2] in problem
    assert "copy the 'include' and 'libs' folders" in problem
    elsewhere = install.missing_python_headers({"include": str(tmp_path / "include")}, windows=False)
    assert "Python.h" in elsewhere and "development headers" in elsewhere and "libs" not in elsewhere


def _check_input(name, spec):
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 else {}
    if isinstance(kind, list):
        assert kind and all(isinstance(v, str) for v in kind), name
        assert opts.get("default", kind[0]) in kind, name
        return
    assert isinstance(kind, str) and kind.upper() == kind, name
    if kind == "INT":
        lo, hi, step, default = opts["min"], opts["max"], opts.get("step", 1), opts["default"]
        assert all(isinstance(v, int) for v in (lo, hi, step, default)), name
        assert lo <= default <= hi and (default - lo) % step == 0, name
    elif kind == "BOOLEAN":
        assert isinstance(opts.get("default", False), bool), name


@pytest.mark.parametrize("node_name", sorted(NODE_CLASS_MAPPINGS))
def test_input_types_are_valid_for_comfyui(node_name):
    cls = NODE_CLASS_MAPPINGS[node_name]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    for section in spec.values():
        for name, entry in section.items():
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, name
            _check_input(name, entry)
    assert isinstance(cls.RETURN_TYPES, tuple) and callable(getattr(cls(), cls.FUNCTION))


def test_decode_node_matches_wanvideodecode_inputs():
    spec = WanVideoNativeDecode.INPUT_TYPES()
    req = spec["required"]
    assert list(req) == ["vae", "samples", "enable_vae_tiling", "tile_x", "tile_y", "tile_stride_x", "tile_stride_y"]
    assert req["enable_vae_tiling"][1]["default"] is False
    for k, d in (("tile_x", 272), ("tile_y", 272)):
        assert (req[k][1]["default"], req[k][1]["min"], req[k][1]["max"], req[k][1]["step"]) == (d, 40, 2048, 8)
    for k, d in (("tile_stride_x", 144), ("tile_stride_y", 128)):
        assert (req[k][1]["default"], req[k][1]["min"], req[k][1]["max"], req[k][1]["step"]) == (d, 32, 2040, 8)
    assert spec["optional"]["normalization"][0] == ["default", "minmax", "none"]
    assert WanVideoNativeDecode.VALIDATE_INPUTS(272, 272, 144, 128) is True
    assert isinstance(WanVideoNativeDecode.VALIDATE_INPUTS(144, 272, 144, 128), str)
    assert isinstance(WanVideoNativeDecode.VALIDATE_INPUTS(272, 128, 144, 128), str)


@pytest.fixture(scope="module")
def tiny():
    weights, data = load_fixture("tiny")
    return StandInWanVAE(weights, data["mean"], data["std"]), data


def _expected(raw, mode):
    if mode == "none":
        out = raw
    elif mode == "minmax":
        out = (raw - raw.min()) / (raw.max() - raw.min())
    else:
        out = (np.clip(raw, -1, 1) + 1) / 2
    return np.clip(out, 0, 1)


def _latent(data, **extra):
    return {"samples": torch.from_numpy(data["latents"])[None], **extra}


@pytest.mark.parametrize("mode", ["default", "minmax", "none"])
@pytest.mark.parametrize("tiling", [False, True])
def test_decode_node_normalization(tiny, mode, tiling):
    vae, data = tiny
    (images,) = WanVideoNativeDecode().decode(vae, _latent(data), tiling, 40, 40, 32, 32, normalization=mode)
    raw = data["expected_raw"].transpose(1, 2, 3, 0)
    assert isinstance(images, torch.Tensor) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.shape == raw.shape
    assert np.abs(images.numpy() - _expected(raw, mode)).max() <= NODE_TOL


def test_each_decode_says_in_the_console_where_it_ran_and_what_it_took(tiny, caplog):
    """One INFO line a decode (ComfyUI's console shows INFO): the figures of that decode's last_stats."""
    from wanvideo_vae.comfy_nodes import _decoders
    vae, data = tiny
    for tiled in (False, True):
        caplog.clear()
        with caplog.at_level("INFO", logger="wanvideo_vae"):
            WanVideoNativeDecode().decode(vae, _latent(data), tiled, 40, 40, 32, 32)
        s = _decoders._cache[vae][1].last_stats
        tiles = f"in {s['tiles_x']}x{s['tiles_y']} tiles" if tiled else "untiled"
        assert not tiled or s["n_tiles"] > 1
        assert [r.getMessage() for r in caplog.records] == [
            f"wanvideo_vae: {s['frames']} frames of {s['width']}x{s['height']} decoded on the CPU in fp32, {tiles}, "
            f"in {s['seconds_total']:.2f} s; working memory {s['arena_high_water'] / 2**20:.0f} MiB, weights "
            f"{s['weight_bytes'] / 2**20:.0f} MiB"]


def test_decode_node_has_ref_drop_last_end_image(tiny):
    vae, data = tiny
    lat = torch.from_numpy(data["latents"])[None]
    extra = torch.randn(1, lat.shape[1], 1, *lat.shape[3:])
    raw = data["expected_raw"].transpose(1, 2, 3, 0)
    node = WanVideoNativeDecode()
    (ref,) = node.decode(vae, {"samples": torch.cat([extra, lat], 2), "has_ref": True}, False, 272, 272, 144, 128)
    assert np.abs(ref.numpy() - _expected(raw, "default")).max() <= NODE_TOL
    (last,) = node.decode(vae, {"samples": torch.cat([lat, extra], 2), "drop_last": True}, True, 40, 40, 32, 32)
    assert np.abs(last.numpy() - _expected(raw, "default")).max() <= NODE_TOL
    (end,) = node.decode(vae, _latent(data, end_image=torch.zeros(1, 8, 8, 3)), False, 272, 272, 144, 128)
    end_raw = data["expected_end_raw"].transpose(1, 2, 3, 0)[:-1]
    assert np.abs(end.numpy() - _expected(end_raw, "default")).max() <= NODE_TOL


def test_decode_node_refuses_before_decoding_an_end_image_alone_or_an_unknown_normalization(tiny):
    """Each refused before any decode (a VAE that is not one would be named first otherwise): an end image as
    the only latent frame left nothing to return (an empty IMAGE), and a misspelt normalization was refused
    after the whole decode."""
    vae, data = tiny
    node = WanVideoNativeDecode()
    one = {"samples": torch.from_numpy(data["latents"][:, :1])[None], "end_image": torch.zeros(1, 8, 8, 3)}
    with pytest.raises(ValueError, match="needs at least 2 latent frames with an end_image .*got 1"):
        node.decode(object(), one, False, 272, 272, 144, 128)
    dropped = {"samples": torch.from_numpy(data["latents"][:, :2])[None], "end_image": torch.zeros(1, 8, 8, 3),
               "drop_last": True}
    with pytest.raises(ValueError, match="got 1"):
        node.decode(object(), dropped, False, 272, 272, 144, 128)
    for wrong in ("Default", None):
        with pytest.raises(WanVAEError, match="normalization must be one of"):
            node.decode(object(), _latent(data), False, 272, 272, 144, 128, normalization=wrong)


def test_decode_node_trims_the_canvas_expansion(tiny):
    """WanAnimate's transition runs sample canvas_expansion_px frames ahead of the video; the wrapper's
    decode drops them (after the end frame), except in a looped video."""
    vae, data = tiny
    raw = data["expected_raw"].transpose(1, 2, 3, 0)
    node = WanVideoNativeDecode()
    (trimmed,) = node.decode(vae, _latent(data, canvas_expansion_px=5), False, 272, 272, 144, 128)
    assert np.abs(trimmed.numpy() - _expected(raw, "default")[5:]).max() <= NODE_TOL
    (end,) = node.decode(vae, _latent(data, end_image=torch.zeros(1, 8, 8, 3), canvas_expansion_px=3), True, 40, 40,
                         32, 32)
    end_raw = data["expected_end_raw"].transpose(1, 2, 3, 0)[:-1]
    assert np.abs(end.numpy() - _expected(end_raw, "default")[3:]).max() <= NODE_TOL
    (looped,) = node.decode(vae, _latent(data, looped=True), False, 272, 272, 144, 128)
    lat = torch.from_numpy(data["latents"])
    loop_raw = vae.decode([torch.cat([lat[:, -3:], lat[:, :2]], 1)], "cpu")[0].numpy().transpose(1, 2, 3, 0)
    expected = np.concatenate([_expected(loop_raw, "minmax")[9:], _expected(raw, "default")[5:]])
    assert looped.shape == expected.shape and np.abs(looped.numpy() - expected).max() <= NODE_TOL
    (looped_canvas,) = node.decode(vae, _latent(data, looped=True, canvas_expansion_px=5), False, 272, 272, 144, 128)
    assert torch.equal(looped, looped_canvas)  # a looped video keeps them


@pytest.mark.parametrize("mode", ["default", "minmax"])
def test_decode_node_holds_one_video_of_frames(tiny, mode):
    """A long video's frames are GiBs: the node normalizes the decode in place and hands the same
    memory to torch, so the call's peak is one array of the output's size (plus the decoder's arena,
    small here), not the three or four a chain of copies would take."""
    import tracemalloc
    vae, data = tiny
    latents = torch.from_numpy(random_latents(data["latents"].shape[0], 9, 24, 24, seed=3))[None]
    node = WanVideoNativeDecode()
    node.decode(vae, {"samples": latents}, False, 272, 272, 144, 128, mode)  # the Decoder is cached from here on
    tracemalloc.start()
    try:
        (images,) = node.decode(vae, {"samples": latents}, False, 272, 272, 144, 128, mode)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert images.dtype == torch.float32 and 0.0 <= images.min() and images.max() <= 1.0
    assert peak <= 1.5 * images.numel() * 4, (peak, images.numel() * 4)


def test_decode_node_video_passthrough(tiny):
    vae, _ = tiny
    video = torch.linspace(-2, 2, 5 * 4 * 4 * 3).reshape(5, 4, 4, 3)
    (images,) = WanVideoNativeDecode().decode(vae, {"video": video}, False, 272, 272, 144, 128)
    np.testing.assert_allclose(images.numpy(), ((video.clamp(-1, 1) + 1) / 2).numpy())
    assert video.min() == -2  # the input is not modified


PASSTHROUGH_PEAK = """
import resource, sys, torch
from wanvideo_vae.comfy_nodes import WanVideoNativeDecode
video = torch.empty(64, 512, 512, 3, dtype=getattr(torch, sys.argv[1])).uniform_(-2, 2)  # its pages touched
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
(images,) = WanVideoNativeDecode().decode(None, {"video": video}, False, 272, 272, 144, 128)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # KiB on Linux
assert images.dtype == torch.float32 and torch.equal(images, (video.float().clamp(-1, 1) + 1) / 2)
print(grown / (images.numel() * 4))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB: Linux")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_decode_node_video_passthrough_makes_one_copy(dtype, tmp_path):
    """InfiniteTalk's sampler hands over its whole decoded video: normalizing it costs one float32 copy on
    the host, no more (a 1000-frame 720p video is 11 GiB in float32). The peak resident memory of a
    process of its own grows by the output's size alone (up to 1.15x: other pages), not twice that."""
    r = subprocess.run([sys.executable, "-c", PASSTHROUGH_PEAK, dtype], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": package_root()}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.split()[-1]) <= 1.15, r.stdout


class WanRepoVAE:
    """The Wan 2.1 repository's wan.modules.vae.WanVAE (InfiniteTalk's and MultiTalk's pipelines hold
    one): .model with the checkpoint's names, mean / std / scale, dtype, device; decode(zs) returns
    float32 videos [3, F, H, W] clamped to [-1, 1] (here the independent PyTorch reference's)."""

    def __init__(self, weights, mean, std):
        from standin_wanvae import module_tree
        self.dtype, self.device = torch.float32, "cpu"
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.scale = [self.mean, 1.0 / self.std]
        self.model = module_tree(weights)

    def encode(self, videos):
        return ["its own encode"]

    def decode(self, zs):
        from reference_decoder import reference_decode
        weights = {k: v.detach().numpy() for k, v in self.model.state_dict().items()}
        return [torch.from_numpy(reference_decode(weights, z.numpy(), self.mean.numpy(), self.std.numpy()))
                .permute(3, 0, 1, 2).float().clamp_(-1, 1) for z in zs]


def test_wan_repo_vae_decodes_natively_as_its_own_decode_does():
    """wanvideo_vae.native_wan_vae(vae): the Wan repository's VAE object, its decode(zs) native, the
    rest its own (encode, model, attributes set through it); the object given is not modified. Latents that
    ask for a gradient are refused."""
    import wanvideo_vae
    weights, data = load_fixture("tiny")
    vae = WanRepoVAE(weights, data["mean"], data["std"])
    native = wanvideo_vae.native_wan_vae(vae)
    zs = [torch.from_numpy(data["latents"]), torch.from_numpy(data["latents"][:, :1].copy())]
    ours, theirs = native.decode(zs), vae.decode(zs)
    assert len(ours) == 2 and theirs[0].abs().max() == 1.0  # the decode reaches the clamp
    for o, t in zip(ours, theirs):
        assert o.dtype == torch.float32 and o.shape == t.shape and o.device == t.device
        assert (o - t).abs().max() <= NODE_TOL
    assert native.encode([]) == ["its own encode"] and native.model is vae.model and "decode" not in vars(vae)
    assert wanvideo_vae.native_wan_vae(native) is native
    with pytest.raises(ValueError, match=r"^the latents require a gradient, and this decoder computes none"):
        native.decode([zs[1].clone().requires_grad_()])  # its frames would carry none
    from wanvideo_vae import comfy_nodes  # one Decoder per VAE, patched or not: the decode node given it too
    WanVideoNativeDecode().decode(native, {"samples": zs[1][None]}, False, 272, 272, 144, 128)
    assert vae in comfy_nodes._decoders._cache and native not in comfy_nodes._decoders._cache
    native.device = "cuda:0"
    assert vae.device == "cuda:0"
    with pytest.raises(ValueError, match=r"^this VAE \(object\) has no .model module"):
        wanvideo_vae.native_wan_vae(object())
    wanvae = StandInWanVAE(weights, data["mean"], data["std"])  # its decode takes other arguments: refused now
    for other in (wanvae, WanVideoNativeVAEPatch().patch(wanvae)[0]):
        with pytest.raises(ValueError, match=r"^this VAE \((StandInWanVAE|NativeWanVAE)\) decodes as a WanVideoWrapper "
                                             r"WANVAE .* patch it with WanVideoNativeVAEPatch\(\)\.patch\(vae\)"):
            wanvideo_vae.native_wan_vae(other)
    from standin_wanvae import module_tree
    wan22 = WanRepoVAE(weights, data["mean"], data["std"])  # Wan 2.2's Wan2_2_VAE has the same attributes
    wan22.model = module_tree(dict(weights, **{"decoder.upsamples.0.upsamples.0.residual.2.weight":
                                               np.zeros((4, 4, 3, 3, 3), np.float32)}))
    with pytest.raises(ValueError, match=r"^this VAE has the Wan 2.2 VAE's layout .* the native decoder decodes the "
                                         r"Wan 2.1 VAE only: keep its own decode"):
        wanvideo_vae.native_wan_vae(wan22)
    bare = WanRepoVAE(weights, data["mean"], data["std"])
    del bare.mean, bare.std, bare.scale
    with pytest.raises(ValueError, match="no mean/inv_std, std or scale"):
        wanvideo_vae.native_wan_vae(bare)


def test_wan_repo_vae_returns_each_video_on_its_latents_device(monkeypatch):
    """The repository's decode leaves each video where its latents are: a GPU's latents give GPU videos
    (a meta tensor stands in for the other device here; the decode itself is stubbed)."""
    import wanvideo_vae
    from wanvideo_vae import comfy_nodes
    weights, data = load_fixture("tiny")
    native = wanvideo_vae.native_wan_vae(WanRepoVAE(weights, data["mean"], data["std"]))
    monkeypatch.setattr(comfy_nodes, "_decode_raw", lambda *a, **k: np.zeros((1, 8, 8, 3), np.float32))
    videos = native.decode([torch.zeros(16, 1, 1, 1, device="meta"), torch.zeros(16, 1, 1, 1)])
    assert [v.device.type for v in videos] == ["meta", "cpu"] and videos[0].shape == (3, 1, 8, 8)


def test_legacy_std_and_scale_attributes():
    weights, data = load_fixture("single_frame")
    vae = StandInWanVAE(weights, data["mean"], data["std"], legacy=True)
    (images,) = WanVideoNativeDecode().decode(vae, _latent(data), False, 272, 272, 144, 128)
    assert np.abs(images.numpy() - _expected(data["expected_raw"].transpose(1, 2, 3, 0), "default")).max() <= NODE_TOL


@pytest.mark.parametrize("end_", [False, True])
@pytest.mark.parametrize("tiled", [False, True])
def test_patched_wanvae_decode_matches_standin(tiny, end_, tiled):
    vae, data = tiny
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    assert patched is not vae and type(vae).decode is StandInWanVAE.decode
    lat = torch.from_numpy(data["latents"])[None]
    ours = patched.decode(lat, "cpu", end_=end_, tiled=tiled, tile_size=(5, 5), tile_stride=(4, 4), pbar=False)
    ref = vae.decode(lat, "cpu", end_=end_, tiled=tiled)
    assert isinstance(ours, list) and len(ours) == 1 and ours[0].shape == ref[0].shape
    assert (ours[0] - ref[0]).abs().max().item() <= NODE_TOL
    assert patched.dtype == vae.dtype and patched.model is vae.model  # everything else is the original's
    assert patched.to("cpu") is patched


def test_a_patched_wanvae_stays_patched_through_the_modules_own_methods(tiny):
    """vae = vae.to(device), .eval(), .half(), ... return the module itself: through the patch, the patch."""
    vae, data = tiny
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    for again in (patched.to("cpu"), patched.eval(), patched.cpu(), patched.requires_grad_(False), patched.float()):
        assert again is patched
    assert isinstance(patched.model, torch.nn.Module) and patched.model is vae.model  # attributes as they are
    assert patched.state_dict().keys() == vae.state_dict().keys()  # other methods' results as they are
    assert type(vae).decode is StandInWanVAE.decode and patched.eval().decode.__self__ is patched


def test_patched_wanvae_returns_what_the_wrapper_returns(tiny):
    """Untiled: the raw decode in the VAE's dtype on `device` (or output_dtype on output_device); tiled:
    float32 clamped to [-1, 1] on the CPU. InfiniteTalk keeps every window's frames on the host, so
    the dtype halves that memory, and its motion frames are re-encoded unclamped as upstream's are."""
    import copy
    vae, data = tiny
    bf16 = copy.copy(vae)
    bf16.dtype = torch.bfloat16
    (patched,) = WanVideoNativeVAEPatch().patch(bf16)
    lat = torch.from_numpy(data["latents"])[None]
    raw = torch.from_numpy(data["expected_raw"])
    assert raw.abs().max() > 1  # the fixture overshoots [-1, 1]: clamping shows
    untiled = patched.decode(lat, "cpu", pbar=False)[0]
    assert untiled.dtype == torch.bfloat16 and untiled.device.type == "cpu"
    assert (untiled.float() - raw).abs().max().item() <= NODE_TOL + raw.abs().max().item() / 128  # bf16 rounding
    exact = patched.decode(lat, "cpu", output_device="cpu", output_dtype=torch.float32)[0]
    assert exact.dtype == torch.float32 and (exact - raw).abs().max().item() <= NODE_TOL
    tiled = patched.decode(lat, "cpu", tiled=True, tile_size=(5, 5), tile_stride=(4, 4))[0]
    assert tiled.dtype == torch.float32 and (tiled - raw.clamp(-1, 1)).abs().max().item() <= NODE_TOL
    for ours, theirs in ((untiled, bf16.decode(lat, "cpu")[0]), (tiled, bf16.decode(lat, "cpu", tiled=True)[0])):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape


def test_vaes_this_decoder_does_not_implement_are_refused_plainly(tiny):
    """WanVideoWrapper also loads a TAEHV tiny VAE and the Wan 2.2 VAE (16x, z_dim 48): the patch node
    refuses them before any sampling, the decode node when it runs."""
    vae, data = tiny

    class TAEHV(torch.nn.Module):
        pass

    class WanVideoVAE38(torch.nn.Module):
        upsampling_factor = 16
        z_dim = 48

    for other, says in ((TAEHV(), "TAEHV"), (WanVideoVAE38(), "16x")):
        with pytest.raises(ValueError, match=says):
            WanVideoNativeVAEPatch().patch(other)
        with pytest.raises(ValueError, match=says):
            WanVideoNativeDecode().decode(other, _latent(data), False, 272, 272, 144, 128)
    with pytest.raises(ValueError, match="no .model module"):
        WanVideoNativeVAEPatch().patch(object())


def test_a_compiled_decoder_reads_as_its_checkpoint(tiny):
    """WanVideoWrapper's loader can torch.compile the decoder: its state dict keys gain '_orig_mod'."""
    from wanvideo_vae import normalize_keys
    vae, _ = tiny
    keys = normalize_keys(vae.model.state_dict())
    compiled = {k.replace("decoder.", "decoder._orig_mod.", 1): v for k, v in vae.model.state_dict().items()}
    compiled = {("_orig_mod.model." + k): v for k, v in compiled.items()}
    assert normalize_keys(compiled).keys() == keys.keys()


def test_patched_wanvae_takes_wanvideowrapper_positional_order(tiny):
    """WanVideoWrapper's decode(hidden_states, device, tiled, end_, ...): tiled third, end_ fourth."""
    vae, data = tiny
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    lat = torch.from_numpy(data["latents"])[None]
    tiled = patched.decode(lat, "cpu", True)[0]
    end = patched.decode(lat, "cpu", False, True)[0]
    assert tiled.shape == vae.decode(lat, "cpu", True)[0].shape
    assert end.shape == vae.decode(lat, "cpu", False, True)[0].shape and end.shape[1] != tiled.shape[1]


@pytest.mark.parametrize("container", [tuple, list])
def test_a_loaders_one_item_container_is_patched_and_handed_on_as_it_came(tiny, container):
    """ComfyUI-MultiGPU's WanVideoVAELoaderMultiGPU (some versions) hands on the wrapper loader's own
    1-tuple, which its nodes index: the patch node patches the VAE inside and returns the same kind
    of container; the decode node reads the VAE inside too."""
    vae, data = tiny
    (patched,) = WanVideoNativeVAEPatch().patch(container([vae]))
    assert type(patched) is container and len(patched) == 1 and isinstance(patched[0], NativeWanVAE)
    assert WanVideoNativeVAEPatch().patch(patched)[0][0] is patched[0]
    lat = torch.from_numpy(data["latents"])[None]
    assert (patched[0].decode(lat, "cpu")[0] - vae.decode(lat, "cpu")[0]).abs().max().item() <= NODE_TOL
    (ours,) = WanVideoNativeDecode().decode(container([vae]), _latent(data), False, 272, 272, 144, 128)
    (plain,) = WanVideoNativeDecode().decode(vae, _latent(data), False, 272, 272, 144, 128)
    assert torch.equal(ours, plain)


def test_patched_and_plain_wanvae_share_one_decoder(tiny):
    from wanvideo_vae.comfy_nodes import _decoders
    vae, data = tiny
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    patched.decode(torch.from_numpy(data["latents"])[None], "cpu")
    WanVideoNativeDecode().decode(patched, _latent(data), False, 272, 272, 144, 128)
    WanVideoNativeDecode().decode(vae, _latent(data), False, 272, 272, 144, 128)
    assert patched not in _decoders._cache and len([k for k in _decoders._cache.keys() if k is vae]) == 1


def test_gradio_call_unchanged(tiny):
    vae, data = tiny
    node = WanVideoNativeDecode()
    samples = {"samples": torch.from_numpy(data["latents"])[None]}
    video = node.decode(vae=vae, samples=samples, enable_vae_tiling=True, tile_x=272, tile_y=272, tile_stride_x=144,
                        tile_stride_y=128)[0]
    assert tuple(video.shape) == (13, 40, 56, 3)
    assert np.abs(video.numpy() - _expected(data["expected_raw"].transpose(1, 2, 3, 0), "default")).max() <= NODE_TOL


def test_core_vae_node():
    """ComfyUI's core VAE: first_stage_model holds the Wan weights; latents arrive un-normalized."""
    weights, data = load_fixture("tiny")
    from standin_wanvae import module_tree

    class CoreVAE:
        def __init__(self):
            self.first_stage_model = module_tree(weights)

    unnormalized = data["latents"] * data["std"][:, None, None, None] + data["mean"][:, None, None, None]
    (images,) = WanCoreVAENativeDecode().decode({"samples": torch.from_numpy(unnormalized)[None]}, CoreVAE(), 64, True)
    assert np.abs(images.numpy() - _expected(data["expected_raw"].transpose(1, 2, 3, 0), "default")).max() <= NODE_TOL
    with pytest.raises(ValueError, match=re.escape("decodes Wan 2.1 latents, videos [B, 4, T, h, w] or images "
                                                   "[B, 4, h, w]; got [1, 48, 2, 4, 4]")):
        WanCoreVAENativeDecode().decode({"samples": torch.zeros(1, 48, 2, 4, 4)}, CoreVAE(), 512, True)

    twelve = dict(weights, **{"decoder.head.2.weight": np.zeros((12,) + weights["decoder.head.2.weight"].shape[1:],
                                                                 np.float32)})
    wan22 = dict(twelve, **{"decoder.upsamples.0.upsamples.0.residual.2.weight": np.zeros((4, 4, 3, 3, 3), np.float32)})

    for model, says in ((twelve, "ends in 12 channels; this node decodes the Wan 2.1 VAE's RGB"),
                        (wan22, "this VAE has the Wan 2.2 VAE's layout")):
        class OtherVAE:
            first_stage_model = module_tree(model)

        with pytest.raises(ValueError, match=re.escape(says)):
            WanCoreVAENativeDecode().decode({"samples": torch.from_numpy(unnormalized)[None]}, OtherVAE(), 64, True)

    class ImageVAE:  # an SD-style VAE wired in by mistake
        first_stage_model = torch.nn.Conv2d(4, 3, 1)

    with pytest.raises(ValueError, match="Wan 2.1 video VAE; this VAE \\(Conv2d\\)"):
        WanCoreVAENativeDecode().decode({"samples": torch.zeros(1, 4, 8, 8)}, ImageVAE(), 512, True)


def test_core_vae_node_refuses_weight_patches():
    """A core VAE whose ModelPatcher holds weight patches (ComfyUI applies them only when it loads the
    VAE to run it) is refused by name, not decoded without them; a patcher with none, or only emptied
    entries, decodes as the module's weights say."""
    vae, z, expected = _core_vae_and_latents()

    class Patcher:
        def __init__(self, patches):
            self.patches = patches

    lora = (1.0, torch.zeros(1), 1.0, None, None)
    vae.patcher = Patcher({"decoder.head.2.weight": [lora], "decoder.conv1.weight": [lora], "decoder.conv1.bias": []})
    with pytest.raises(ValueError, match=re.escape("this VAE carries weight patches (2 weights, e.g. "
                                                   "'decoder.conv1.weight': a LoRA or a merge)")):
        WanCoreVAENativeDecode().decode({"samples": z[None]}, vae, 64, True)
    for patches in ({}, {"decoder.conv1.weight": []}):
        vae.patcher = Patcher(patches)
        (images,) = WanCoreVAENativeDecode().decode({"samples": z[None]}, vae, 64, True)
        assert np.abs(images.numpy() - expected).max() <= NODE_TOL


def test_core_vae_node_tiles_only_when_tiling_is_enabled():
    """enable_tiling=False decodes untiled whatever tile_size says; True in tiles of tile_size px (64:
    cores of 48 px, two across the 56 px wide frames). The frames are the same either way."""
    from standin_wanvae import module_tree
    from wanvideo_vae.comfy_nodes import _decoders
    weights, data = load_fixture("tiny")

    class CoreVAE:
        first_stage_model = module_tree(weights)

    vae = CoreVAE()
    unnormalized = data["latents"] * data["std"][:, None, None, None] + data["mean"][:, None, None, None]
    samples = {"samples": torch.from_numpy(unnormalized)[None]}
    images = {}
    for tiling, tiles in ((False, 1), (True, 2)):
        (images[tiling],) = WanCoreVAENativeDecode().decode(samples, vae, 64, tiling)
        assert _decoders._cache[vae][1].last_stats["n_tiles"] == tiles
    assert (images[True] - images[False]).abs().max() <= NODE_TOL


class _Interrupted(BaseException):
    """ComfyUI's InterruptProcessingException: a BaseException (an Exception before), past any `except
    Exception`: the decode must still free its memory and leave the node usable."""


@pytest.fixture
def fake_comfy(monkeypatch):
    """comfy.utils.ProgressBar and comfy.model_management's interrupt check, as ComfyUI provides them."""
    import types
    state = {"updates": [], "interrupt_after": None, "checks": 0}

    class ProgressBar:
        def __init__(self, total):
            state["total"] = total

        def update_absolute(self, value, total=None):
            state["updates"].append(value)

    def throw_exception_if_processing_interrupted():
        state["checks"] += 1
        if state["interrupt_after"] is not None and state["checks"] >= state["interrupt_after"]:
            raise _Interrupted()

    comfy = types.ModuleType("comfy")
    comfy.utils = types.ModuleType("comfy.utils")
    comfy.utils.ProgressBar = ProgressBar
    comfy.model_management = types.ModuleType("comfy.model_management")
    comfy.model_management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    for name, mod in (("comfy", comfy), ("comfy.utils", comfy.utils), ("comfy.model_management", comfy.model_management)):
        monkeypatch.setitem(sys.modules, name, mod)
    return state


def test_progress_bar_and_interrupt_inside_comfyui(tiny, fake_comfy):
    vae, data = tiny
    node = WanVideoNativeDecode()
    node.decode(vae, _latent(data), True, 40, 40, 32, 32)
    assert fake_comfy["updates"] and fake_comfy["updates"][-1] == fake_comfy["total"]
    assert fake_comfy["updates"] == sorted(fake_comfy["updates"])
    fake_comfy["checks"], fake_comfy["interrupt_after"] = 0, 3
    with pytest.raises(_Interrupted):  # ComfyUI's own exception reaches ComfyUI
        node.decode(vae, _latent(data), True, 40, 40, 32, 32)
    assert fake_comfy["checks"] == 3  # stopped at the first check that raised
    fake_comfy["interrupt_after"] = None
    (images,) = node.decode(vae, _latent(data), True, 40, 40, 32, 32)  # and the next decode works
    # a sampler's own window decodes (pbar=False): no bar of ours over the sampler's, interrupt still checked
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    fake_comfy["updates"].clear()
    fake_comfy["checks"] = 0
    patched.decode(_latent(data)["samples"], "cpu", tiled=True, tile_size=(5, 5), pbar=False)
    assert fake_comfy["updates"] == [] and fake_comfy["checks"] > 0
    assert np.abs(images.numpy() - _expected(data["expected_raw"].transpose(1, 2, 3, 0), "default")).max() <= NODE_TOL


def _fake_backends(usable):
    def backends():
        return {"cpu": {"usable": True}, "cuda": {"usable": usable}}
    return backends


def _usable_gpus(monkeypatch, capability=lambda index: (9, 0)):
    """The CUDA backend usable, the current device 0 (torch's and the backend's), and each device's
    compute capability as the backend reads it."""
    from wanvideo_vae import comfy_nodes
    monkeypatch.setattr(comfy_nodes, "backends", _fake_backends(True))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    stand_in_cuda_backend(monkeypatch, capability)


@pytest.mark.parametrize("dtype,precision", [(torch.bfloat16, "bf16"), (torch.float16, "fp16"),
                                             (torch.float32, "fp32")])
def test_nodes_pick_the_gpu_in_the_vaes_precision_when_usable(monkeypatch, dtype, precision):
    from wanvideo_vae import comfy_nodes
    module = torch.nn.Conv2d(2, 2, 1).to(dtype)
    latents = torch.zeros(16, 2, 3, 3)  # ComfyUI keeps latents on the CPU between nodes
    _usable_gpus(monkeypatch)
    assert comfy_nodes._backend_for(module, latents) == ("cuda", precision, 0)
    on_second = [type("T", (), {"device": torch.device(d)})() for d in ("cuda:1", "cuda")]
    assert comfy_nodes._backend_for(module, on_second[0]) == ("cuda", precision, 1)  # an index either way
    assert comfy_nodes._backend_for(module, on_second[1]) == ("cuda", precision, 0)
    # a core VAE's own device (where ComfyUI runs it) wins over the latents' GPU
    assert comfy_nodes._backend_for(module, on_second[0], device=torch.device("cuda", 2)) == ("cuda", precision, 2)
    monkeypatch.setenv("WANVIDEO_VAE_BACKEND", "cpu")
    assert comfy_nodes._backend_for(module, latents) == ("cpu", None, None)


def test_a_vae_of_no_float_type_the_decoder_takes_decodes_in_bf16(monkeypatch):
    """A VAE without parameters, or in float64, has no precision of ours: the GPU decoder's default."""
    from wanvideo_vae import comfy_nodes
    _usable_gpus(monkeypatch)
    latents = torch.zeros(16, 2, 3, 3)
    assert comfy_nodes._backend_for(torch.nn.Conv2d(2, 2, 1).double(), latents) == ("cuda", "bf16", 0)
    assert comfy_nodes._backend_for(torch.nn.Identity(), latents) == ("cuda", "bf16", 0)


def test_a_bf16_vae_decodes_in_fp32_on_a_gpu_without_bf16(monkeypatch):
    """Turing (7.5) and older have no bf16 arithmetic, where the CUDA backend refuses bf16; the nodes
    decode a bf16 VAE exactly in fp32 there instead of failing. An fp16 VAE stays fp16."""
    from wanvideo_vae import comfy_nodes
    capability = {0: (7, 5), 1: (8, 6)}
    _usable_gpus(monkeypatch, lambda index: capability[index])
    latents = torch.zeros(16, 2, 3, 3)
    bf16, fp16 = (torch.nn.Conv2d(2, 2, 1).to(dtype) for dtype in (torch.bfloat16, torch.float16))
    assert comfy_nodes._backend_for(bf16, latents) == ("cuda", "fp32", 0)
    assert comfy_nodes._backend_for(fp16, latents) == ("cuda", "fp16", 0)
    on_second = type("T", (), {"device": torch.device("cuda:1")})()
    assert comfy_nodes._backend_for(bf16, on_second) == ("cuda", "bf16", 1)


def test_latents_on_another_gpu_go_to_the_decoders():
    from wanvideo_vae.comfy_nodes import _on_decoder_gpu

    class OnGpu:  # a CUDA tensor as far as the node can tell
        def __init__(self, index):
            self.device = torch.device("cuda", index)

        def to(self, where):
            return OnGpu(torch.device(where).index)

    assert _on_decoder_gpu(OnGpu(0), ("cuda", "bf16", 1)).device.index == 1
    same = OnGpu(1)
    assert _on_decoder_gpu(same, ("cuda", "bf16", 1)) is same
    host = torch.zeros(1)
    assert _on_decoder_gpu(host, ("cuda", "bf16", 1)) is host  # the decoder uploads host latents itself
    assert _on_decoder_gpu(host, ("cpu", None, None)) is host


def test_core_node_has_comfyui_free_the_memory_its_tiles_want(monkeypatch, fake_comfy):
    """As ComfyUI's own VAE decode does, the core node asks ComfyUI to unload models until the arena of
    the tiles it was given fits (within the decoder's share of the free memory); not on the CPU."""
    from wanvideo_vae import comfy_nodes
    freed = []
    sys.modules["comfy.model_management"].free_memory = lambda need, device: freed.append((need, device))
    dec = comfy_nodes.Decoder(random_weights(8, 4), mean=[0.0] * 4, std=[1.0] * 4)
    comfy_nodes._make_room_like_comfyui(dec, (1, 4, 2, 30, 40), 128, 128, True)
    assert not freed  # the CPU backend: nothing to ask
    monkeypatch.setattr(type(dec), "backend", property(lambda self: "cuda"))
    monkeypatch.setattr(type(dec), "device", property(lambda self: 0))
    comfy_nodes._make_room_like_comfyui(dec, (1, 4, 2, 30, 40), 128, 128, True)
    plan = dec.plan(2, 30, 40, tile_x=128, tile_y=128, tile_stride_x=8, tile_stride_y=8, max_memory=1 << 62)
    assert plan["n_tiles"] > 1
    assert freed == [(int(plan["planned_bytes"] / comfy_nodes.DEVICE_BUDGET_SHARE), torch.device("cuda", 0))]


def test_nodes_stay_on_the_cpu_without_a_usable_gpu(monkeypatch, capsys):
    from wanvideo_vae import comfy_nodes
    monkeypatch.setattr(comfy_nodes, "backends", _fake_backends(False))
    monkeypatch.setattr(comfy_nodes, "_warned_cpu", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert comfy_nodes._backend_for(torch.nn.Conv2d(2, 2, 1), torch.zeros(1)) == ("cpu", None, None)
    assert capsys.readouterr().err == ""  # no GPU at all: the CPU is all there is


def test_nodes_say_once_why_they_decode_on_the_cpu_beside_a_gpu(monkeypatch, capsys):
    """A CUDA backend that was not built (no nvcc) or cannot run (an old driver) would otherwise show
    only as a decode that seems to hang."""
    from wanvideo_vae import comfy_nodes
    monkeypatch.setattr(comfy_nodes, "backends", lambda: {"cuda": {"usable": False, "reason": "not built: nvcc not found"}})
    monkeypatch.setattr(comfy_nodes, "_warned_cpu", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for _ in range(2):
        assert comfy_nodes._backend_for(torch.nn.Conv2d(2, 2, 1), torch.zeros(1)) == ("cpu", None, None)
    err = capsys.readouterr().err
    assert err.count("wanvideo_vae: decoding on the CPU although PyTorch has a GPU") == 1
    assert "(not built: nvcc not found)" in err
    monkeypatch.setattr(comfy_nodes, "_warned_cpu", set())
    monkeypatch.setenv("WANVIDEO_VAE_BACKEND", "cpu")  # chosen: nothing to say
    assert comfy_nodes._backend_for(torch.nn.Conv2d(2, 2, 1), torch.zeros(1)) == ("cpu", None, None)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("gpu", ["an AMD GPU (ROCm)", "an Apple GPU (MPS)"])
def test_nodes_say_once_that_they_have_no_backend_for_an_amd_or_apple_gpu(monkeypatch, capsys, gpu):
    """ROCm answers to torch.cuda, MPS to torch.backends.mps: a GPU this decoder has no code for, so not
    "the CUDA backend is not usable" (no build would make it so) but which decode runs there instead."""
    from wanvideo_vae import comfy_nodes
    monkeypatch.setattr(comfy_nodes, "backends", lambda: {"cuda": {"usable": False, "reason": "no CUDA driver"}})
    monkeypatch.setattr(comfy_nodes, "_warned_cpu", set())
    amd = gpu.startswith("an AMD")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: amd)
    monkeypatch.setattr(torch.version, "hip", "6.2" if amd else None, raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: not amd)
    for _ in range(2):
        assert comfy_nodes._backend_for(torch.nn.Conv2d(2, 2, 1), torch.zeros(1)) == ("cpu", None, None)
    err = capsys.readouterr().err
    assert err.count(f"wanvideo_vae: decoding on the CPU: PyTorch runs on {gpu}, and this decoder's GPU backend "
                     "is for NVIDIA GPUs (CUDA).") == 1, err
    assert "ComfyUI's own VAE Decode, or WanVideoDecode, decodes on this GPU" in err and "not usable" not in err
    monkeypatch.setenv("WANVIDEO_VAE_BACKEND", "cpu")  # chosen: nothing to say
    monkeypatch.setattr(comfy_nodes, "_warned_cpu", set())
    assert comfy_nodes._backend_for(torch.nn.Conv2d(2, 2, 1), torch.zeros(1)) == ("cpu", None, None)
    assert capsys.readouterr().err == ""


def test_decoder_cache_survives_offload_and_sees_new_weights():
    from wanvideo_vae.comfy_nodes import _decoder_weights, _fingerprint

    def vae_of(decoder):  # keys decoder.0.weight, ...: decoder-side, as a Wan VAE's
        vae = torch.nn.Module()
        vae.decoder = decoder
        vae.encoder = torch.nn.Conv2d(2, 2, 1)
        return vae

    module = vae_of(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Conv2d(3, 2, 1)))
    key = _fingerprint(_decoder_weights(module))
    moved = vae_of(torch.nn.Sequential(*[m for m in module.decoder]))  # same values in new storage, as after an offload
    for p in moved.parameters():
        p.data = p.data.clone()
    assert _fingerprint(_decoder_weights(moved)) == key
    with torch.no_grad():
        module.decoder[0].weight.add_(1.0)
    assert _fingerprint(_decoder_weights(module)) != key
    key = _fingerprint(_decoder_weights(module))
    with torch.no_grad():  # any weight, not only the first and the last
        module.decoder[0].bias.zero_()
    assert _fingerprint(_decoder_weights(module)) != key
    key = _fingerprint(_decoder_weights(module))
    module.encoder.to(torch.bfloat16)  # ComfyUI's dynamic VRAM swaps weights for copies as it encodes
    assert _fingerprint(_decoder_weights(module)) == key


def test_a_vae_weight_without_values_is_named(tiny):
    """Under ComfyUI's dynamic VRAM a weight its checkpoint lacks may stay a meta tensor."""
    from wanvideo_vae.comfy_nodes import _decoder_weights
    vae = torch.nn.Module()
    vae.decoder = torch.nn.Conv2d(2, 2, 1, device="meta")
    with pytest.raises(ValueError, match="weight 'decoder.weight' holds no values"):
        _decoder_weights(vae)


def test_core_vae_places_the_decoder_on_its_own_device_in_its_dtype(monkeypatch):
    """comfy.sd.VAE says where ComfyUI runs it (.device) and in what (.vae_dtype); its parameters may be
    offloaded, or under dynamic VRAM in the checkpoint file's dtype."""
    from wanvideo_vae import comfy_nodes
    _usable_gpus(monkeypatch)
    fp32_params = torch.nn.Conv2d(2, 2, 1)
    assert comfy_nodes._backend_for(fp32_params, torch.zeros(1), device=torch.device("cuda", 1),
                                    dtype=torch.bfloat16) == ("cuda", "bf16", 1)
    assert comfy_nodes._backend_for(fp32_params, torch.zeros(1)) == ("cuda", "fp32", 0)
    # ComfyUI's --cpu-vae (and --cpu) put the core VAE's device on the CPU: the user asked for the CPU
    assert comfy_nodes._backend_for(fp32_params, torch.zeros(1), device=torch.device("cpu")) == ("cpu", None, None)


def test_comfyui_unload_models_closes_the_gpu_decoders(tiny, monkeypatch, fake_comfy, capsys):
    """ComfyUI's "Unload Models" (unload_all_models) knows nothing of a cached Decoder's device memory;
    the first GPU Decoder wraps it, once, so that it closes those Decoders too (not the CPU ones)."""
    from wanvideo_vae import comfy_nodes
    vae, _ = tiny
    mm = sys.modules["comfy.model_management"]
    unloaded = []
    original = mm.unload_all_models = lambda: unloaded.append(True)
    cache = comfy_nodes._DecoderCache()
    monkeypatch.setattr(comfy_nodes, "_decoders", cache)
    on_cpu = cache.get(vae, vae.model, ("cpu", None, None))
    assert mm.unload_all_models is original  # nothing on a GPU yet: ComfyUI left alone

    class GpuDecoder:  # a CUDA Decoder's part in this, on any machine
        backend = "cuda"

        def __init__(self, weights, **kwargs):
            self.closed = False

        def close(self):
            self.closed = True

    class Owner:
        pass

    class Stuck(GpuDecoder):  # asked from its own progress callback: cannot close now
        def close(self):
            from wanvideo_vae import WanVAEError
            raise WanVAEError("cannot close the Decoder it reports on")

    stuck_owner = Owner()
    cache._cache[stuck_owner] = ("key", Stuck(None))  # first in line: the others still close after it
    monkeypatch.setattr(comfy_nodes, "Decoder", GpuDecoder)
    owner = Owner()
    on_gpu = cache.get(owner, vae.model, ("cuda", "bf16", 0))
    assert cache.get(owner, vae.model, ("cuda", "bf16", 0)) is on_gpu
    comfy_nodes._close_gpu_decoders_when_comfyui_unloads()  # a second call wraps nothing more
    assert mm.unload_all_models.__wrapped__ is original

    mm.unload_all_models()
    assert unloaded == [True] and on_gpu.closed and not on_cpu.closed
    assert stuck_owner not in cache._cache and "did not close" in capsys.readouterr().err
    rebuilt = cache.get(owner, vae.model, ("cuda", "bf16", 0))
    assert rebuilt is not on_gpu and not rebuilt.closed
    assert cache.get(vae, vae.model, ("cpu", None, None)) is on_cpu
    on_cpu.close()  # closed by its user: the next node call builds a new one
    assert cache.get(vae, vae.model, ("cpu", None, None)) is not on_cpu


def test_editable_install_is_found_past_a_clone_named_after_the_package(tmp_path, monkeypatch):
    """An editable install (`pip install -e .`) is found by a finder of the import system, not by a
    sys.path entry: with custom_nodes/ first on sys.path, the clone's root comes first, and the
    package is then found through that finder."""
    import wanvideo_vae
    package_dir = os.path.dirname(wanvideo_vae.__file__)

    class EditableFinder:  # what setuptools' editable install puts in sys.meta_path
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "wanvideo_vae":
                return None
            return importlib.util.spec_from_file_location(name, os.path.join(package_dir, "__init__.py"),
                                                          submodule_search_locations=[package_dir])

    custom_nodes = clone_in_custom_nodes(tmp_path)
    no_package = [p for p in sys.path if not os.path.isdir(os.path.join(p or os.getcwd(), "wanvideo_vae"))]
    monkeypatch.setattr(sys, "path", [str(custom_nodes)] + no_package)
    monkeypatch.setattr(sys, "meta_path", sys.meta_path + [EditableFinder()])

    def is_the_editable_one(loaded):
        assert os.path.dirname(loaded.__file__) == package_dir

    load_clone_with_a_fresh_package(custom_nodes, is_the_editable_one)


def test_the_decode_node_makes_room_and_a_samplers_own_decode_does_not(tiny, monkeypatch):
    """WanVideo Decode (native) asks ComfyUI to unload models for its tiles, as the core node does; the
    decodes a sampler makes itself through the patched VAE run beside the sampler's model and do not."""
    from wanvideo_vae import comfy_nodes
    vae, data = tiny
    asked, built = [], []
    monkeypatch.setattr(comfy_nodes, "_make_room_like_comfyui", lambda dec, shape, tx, ty, tiled:
                        asked.append((tuple(shape), tx, ty, tiled)))
    get = comfy_nodes._decoders.get
    monkeypatch.setattr(comfy_nodes._decoders, "get", lambda *a, make_room=False, **kw:
                        built.append(make_room) or get(*a, make_room=make_room, **kw))
    WanVideoNativeDecode().decode(vae, _latent(data), True, 48, 40, 32, 32)
    assert asked == [(tuple(data["latents"].shape), 48, 40, True)] and built == [True]  # room for the weights too
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    patched.decode(torch.from_numpy(data["latents"])[None], "cpu", pbar=False)
    assert len(asked) == 1 and built == [True, False]


def test_wanvae_statistics_from_each_layout_a_wrapper_version_has():
    """(mean, std) from mean / inv_std (the wrapper now), mean / std (older), or scale = [mean, 1 / std]
    alone (the original Wan code's pair); none of them is an error naming what is missing."""
    import types
    from wanvideo_vae.comfy_nodes import _wanvae_stats
    mean, std = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 4.0])
    for vae in (types.SimpleNamespace(mean=mean.view(1, -1, 1, 1, 1), inv_std=1.0 / std),
                types.SimpleNamespace(mean=mean, std=std.view(1, -1, 1, 1, 1), inv_std=None),
                types.SimpleNamespace(scale=[mean, 1.0 / std])):
        got = _wanvae_stats(vae)
        assert torch.equal(got[0], mean) and torch.equal(got[1], std)
    with pytest.raises(ValueError, match="no mean/inv_std, std or scale"):
        _wanvae_stats(types.SimpleNamespace(mean=mean))


def test_decode_node_refuses_a_batch_of_several_videos(tiny):
    """One video per LATENT: a batch is refused by name rather than its first video decoded alone."""
    vae, data = tiny
    two = {"samples": torch.from_numpy(data["latents"])[None].repeat(2, 1, 1, 1, 1)}
    with pytest.raises(ValueError, match="one video at a time; got a batch of 2"):
        WanVideoNativeDecode().decode(vae, two, False, 40, 40, 32, 32)


def test_the_patched_untiled_decode_goes_to_output_device_in_output_dtype(tiny):
    """As the wrapper's decode: output_device wins over `device`, and output_dtype applies with it only;
    without output_device, the frames are in the VAE's dtype on `device`."""
    vae, data = tiny
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    lat = torch.from_numpy(data["latents"])[None]
    out = patched.decode(lat, torch.device("meta"), pbar=False, output_device="cpu", output_dtype=torch.float16)[0]
    assert out.device.type == "cpu" and out.dtype == torch.float16
    out = patched.decode(lat, "cpu", pbar=False, output_dtype=torch.float16)[0]
    assert out.device.type == "cpu" and out.dtype == torch.float32


def test_the_patched_end_frame_decode_returns_as_the_wrappers_does(tiny):
    """The wrapper's end-frame decode (double_decode) takes no output_device / output_dtype: in the VAE's
    dtype on `device`, as there."""
    import copy
    vae, data = tiny
    bf16 = copy.copy(vae)
    bf16.dtype = torch.bfloat16
    (patched,) = WanVideoNativeVAEPatch().patch(bf16)
    lat = torch.from_numpy(data["latents"])[None]
    out = patched.decode(lat, "cpu", end_=True, output_device="cpu", output_dtype=torch.float32)[0]
    theirs = bf16.decode(lat, "cpu", end_=True, output_device="cpu", output_dtype=torch.float32)[0]
    assert out.dtype == theirs.dtype == torch.bfloat16 and out.shape == theirs.shape


def test_decode_node_tiles_are_tile_x_wide_and_tile_y_high(tiny):
    """tile_x is the width, tile_y the height (48 x 40 px, halo 7 each side: cores 32 wide, 24 high)."""
    from wanvideo_vae import comfy_nodes
    vae, data = tiny
    WanVideoNativeDecode().decode(vae, _latent(data), True, 48, 40, 32, 32)
    stats = comfy_nodes._decoders._cache[vae][1].last_stats
    assert (stats["core_x"], stats["core_y"], stats["out_halo"]) == (32, 24, 7)


def test_the_patched_vae_writes_attributes_through_to_the_wrapped_one(tiny):
    """The sampler sets attributes on the VAE it was given (e.g. its dtype or device): they land on the
    wrapped VAE, which the patched one reads them from."""
    import copy
    vae, _ = tiny
    vae = copy.copy(vae)
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    patched.dtype = torch.float16
    assert vae.dtype == torch.float16 and patched.dtype == torch.float16 and "dtype" not in vars(patched)


def test_patched_tile_size_is_height_then_width(tiny, monkeypatch):
    from wanvideo_vae import comfy_nodes
    vae, data = tiny
    seen = []

    def fake(vae, latents, end_frame, tiled, tile_x, tile_y, **kw):
        seen.append((tile_x, tile_y))
        return np.zeros((1, 8, 8, 3), np.float32)

    monkeypatch.setattr(comfy_nodes, "_decode_raw", fake)
    (patched,) = comfy_nodes.WanVideoNativeVAEPatch().patch(vae)
    patched.decode(torch.from_numpy(data["latents"])[None], "cpu", tiled=True, tile_size=(5, 7))
    assert seen == [(56, 40)]
    # read only when tiled, as the wrapper reads it: None from a caller decoding untiled is fine
    patched.decode(torch.from_numpy(data["latents"])[None], "cpu", tiled=False, tile_size=None)
    patched.decode(torch.from_numpy(data["latents"])[None], "cpu", tiled=True, tile_size=None)
    assert seen[1:] == [(272, 272)] * 2  # the wrapper's default tile, (34, 34) latent pixels
    # the wrapper's blended tiles take any size; an exact one needs its halo, so tiny ones are raised
    patched.decode(torch.from_numpy(data["latents"])[None], "cpu", tiled=True, tile_size=(1, 2))
    assert seen[3:] == [(24, 24)]


def test_patched_tiny_tiles_decode_the_same_picture(tiny):
    """tile_size (1, 1) latent pixels, which the wrapper's own tiled decode accepts, decodes in the
    smallest exact tiles: the same frames as any other tile size."""
    from wanvideo_vae.comfy_nodes import WanVideoNativeVAEPatch
    vae, data = tiny
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    lat = torch.from_numpy(data["latents"])[None]
    smallest = patched.decode(lat, "cpu", tiled=True, tile_size=(1, 1), pbar=False)[0]
    usual = patched.decode(lat, "cpu", tiled=True, tile_size=(5, 5), pbar=False)[0]
    assert smallest.shape == usual.shape and (smallest - usual).abs().max().item() <= NODE_TOL


def test_patched_untiled_decode_lands_on_device(tiny):
    from wanvideo_vae.comfy_nodes import WanVideoNativeVAEPatch
    vae, data = tiny
    (patched,) = WanVideoNativeVAEPatch().patch(vae)
    out = patched.decode(torch.from_numpy(data["latents"])[None], torch.device("meta"), pbar=False)[0]
    assert out.device.type == "meta"  # `device`, not the latents' (CPU) device


def test_decoder_cache_rebuilds_for_another_precision(tiny, monkeypatch):
    from wanvideo_vae import comfy_nodes
    vae, _ = tiny

    live = []

    class FakeDecoder:
        backend = "cuda"
        closed = False

        def __init__(self, weights, **kw):
            assert not live  # the one it replaces is closed first: one copy of the weights at a time
            self.precision = kw["precision"]
            live.append(self)

        def close(self):
            live.remove(self)

    monkeypatch.setattr(comfy_nodes, "Decoder", FakeDecoder)
    monkeypatch.setattr(comfy_nodes, "_close_gpu_decoders_when_comfyui_unloads", lambda: None)
    cache = comfy_nodes._DecoderCache()
    assert cache.get(vae, vae.model, ("cuda", "bf16", 0)).precision == "bf16"
    assert cache.get(vae, vae.model, ("cuda", "fp32", 0)).precision == "fp32"
    assert [d.precision for d in live] == ["fp32"]


def test_decoder_cache_rebuilds_for_another_gpu(tiny, monkeypatch):
    """A VAE moved to another GPU gets a Decoder there (its predecessor closed first)."""
    from wanvideo_vae import comfy_nodes
    vae, _ = tiny
    built, closed = [], []

    class FakeDecoder:
        backend, closed = "cuda", False

        def __init__(self, weights, **kw):
            self.device = kw["device"]
            built.append(self.device)

        def close(self):
            closed.append(self.device)

    monkeypatch.setattr(comfy_nodes, "Decoder", FakeDecoder)
    monkeypatch.setattr(comfy_nodes, "_close_gpu_decoders_when_comfyui_unloads", lambda: None)
    cache = comfy_nodes._DecoderCache()
    assert cache.get(vae, vae.model, ("cuda", "bf16", 0)).device == 0
    assert cache.get(vae, vae.model, ("cuda", "bf16", 1)).device == 1
    assert built == [0, 1] and closed == [0]


def test_a_decoder_closed_by_another_thread_before_its_decode_is_replaced(tiny):
    """Between taking a cached Decoder and decoding with it, another thread may close it (a rebuild for
    other weights, ComfyUI unloading models): the decode gets its successor, a bounded number of times;
    any other error of the decoder is raised at once."""
    from wanvideo_vae import WanVAEError, comfy_nodes
    vae, data = tiny
    cache = comfy_nodes._DecoderCache()
    lat = data["latents"]
    on_cpu = (vae, vae.model, ("cpu", None, None))
    stats = dict(mean=data["mean"], std=data["std"])
    used = []

    def closed_by_another_thread_first(dec):
        used.append(dec)
        if len(used) == 1:
            dec.close()
        return dec.decode(lat, raw=True)

    out = cache.run(closed_by_another_thread_first, *on_cpu, **stats)
    assert len(used) == 2 and used[0].closed and not used[1].closed
    assert cache.get(*on_cpu, **stats) is used[1]
    np.testing.assert_allclose(out, used[1].decode(lat, raw=True), rtol=0, atol=0)
    used.clear()

    def always_closed(dec):
        used.append(dec)
        dec.close()
        return dec.decode(lat)

    with pytest.raises(WanVAEError, match="this Decoder is closed"):
        cache.run(always_closed, *on_cpu, **stats)
    assert len(used) == comfy_nodes.CLOSED_RETRIES + 1
    used.clear()

    def bad_latents(dec):
        used.append(dec)
        return dec.decode(lat[:3])

    with pytest.raises(WanVAEError, match="channels"):
        cache.run(bad_latents, *on_cpu, **stats)
    assert len(used) == 1


def test_threads_asking_for_a_new_vaes_decoder_build_it_once(tiny, monkeypatch):
    """Two threads (a Gradio app's requests) asking at once for a VAE's Decoder get the same one: the
    weights are converted once."""
    from wanvideo_vae import comfy_nodes
    vae, _ = tiny
    built = []

    class SlowDecoder:
        backend, closed = "cpu", False

        def __init__(self, weights, **kw):
            built.append(self)
            time.sleep(0.2)  # converting the weights: the other thread asks meanwhile

    monkeypatch.setattr(comfy_nodes, "Decoder", SlowDecoder)
    cache = comfy_nodes._DecoderCache()
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(vae, vae.model, ("cpu", None, None))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and got == built * 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_thread_builds_a_decoder_can_get_one(tiny):
    """The cache's lock, held by a thread of the parent building a Decoder as the process forks, is not
    the child's: the child gets its own Decoder within 10 s."""
    from wanvideo_vae import comfy_nodes
    vae, data = tiny
    held, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with comfy_nodes._decoders._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert held.wait(30)
        pid = os.fork()
        if pid == 0:
            import signal
            signal.alarm(10)
            try:
                dec = comfy_nodes._decoders.get(vae, vae.model, ("cpu", None, None), mean=data["mean"], std=data["std"])
                os._exit(0 if dec.decode(data["latents"]).shape[0] > 0 else 2)
            except BaseException:  # noqa: BLE001
                os._exit(3)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        release.set()
        holder.join()


def test_a_gpu_decode_out_of_memory_is_tried_again_then_raised_as_comfyuis(monkeypatch, fake_comfy):
    """Another process may take device memory after a decode sized its plan: tried once more (torch's
    cache released first; the decode plans for what is free then); a second failure is raised as
    ComfyUI's OOM_EXCEPTION, which its executor answers as for its own (unloading models, its advice),
    where a MemoryError it would not. The host running out (a plain MemoryError) is not retried."""
    import comfy.model_management as mm
    from wanvideo_vae import DeviceMemoryError, comfy_nodes

    class OOM(Exception):
        pass

    emptied, calls = [], []
    monkeypatch.setattr(mm, "soft_empty_cache", lambda: emptied.append(True), raising=False)
    monkeypatch.setattr(mm, "OOM_EXCEPTION", OOM, raising=False)

    def fails(times, error=DeviceMemoryError("out of GPU memory allocating 2147483648 bytes on device 0")):
        def attempt():
            calls.append(True)
            if len(calls) <= times:
                raise error
            return "frames"
        return attempt

    assert comfy_nodes._retried_on_gpu_out_of_memory(fails(1)) == "frames" and len(calls) == 2 and emptied
    calls.clear()
    with pytest.raises(OOM, match="out of GPU memory allocating") as e:
        comfy_nodes._retried_on_gpu_out_of_memory(fails(2))
    assert isinstance(e.value.__cause__, DeviceMemoryError) and len(calls) == 2
    calls.clear()
    with pytest.raises(MemoryError, match="out of host memory") as e:
        comfy_nodes._retried_on_gpu_out_of_memory(fails(1, MemoryError("out of host memory allocating 4096 bytes")))
    assert type(e.value) is MemoryError and len(calls) == 1


def test_device_memory_errors_are_their_own_type():
    """The native decoder says which memory ran out by type: DeviceMemoryError (a MemoryError) for a
    GPU's, a plain MemoryError for the host's, which a CPU decode's budget is."""
    import wanvideo_vae as wv
    assert issubclass(wv.DeviceMemoryError, MemoryError) and not issubclass(wv.DeviceMemoryError, wv.WanVAEError)
    dec = wv.Decoder(random_weights(8, 4), mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(MemoryError, match="budget is 1000 bytes") as e:
        dec.decode(np.zeros((4, 2, 6, 6), np.float32), max_memory=1000)
    assert type(e.value) is MemoryError


def test_a_decoder_built_on_a_gpu_for_a_node_first_has_comfyui_make_room_for_its_weights(tiny, monkeypatch,
                                                                                          fake_comfy):
    """The decode nodes build their Decoder before asking room for its tiles: ComfyUI first unloads
    models until the weights fit (in the decoder's precision, within its share of the free memory);
    not for a cached Decoder, nor for a sampler's own decodes (make_room False), nor on the CPU."""
    from wanvideo_vae import comfy_nodes
    vae, _ = tiny
    events = []
    monkeypatch.setattr(sys.modules["comfy.model_management"], "free_memory",
                        lambda need, device: events.append(("free", need, device)), raising=False)

    class FakeDecoder:
        backend, closed = "cuda", False

        def __init__(self, weights, **kw):
            events.append(("build", kw["precision"]))

    monkeypatch.setattr(comfy_nodes, "Decoder", FakeDecoder)
    monkeypatch.setattr(comfy_nodes, "_close_gpu_decoders_when_comfyui_unloads", lambda: None)
    n = sum(v.numel() for v in comfy_nodes._decoder_weights(vae.model).values())
    cache = comfy_nodes._DecoderCache()
    cache.get(vae, vae.model, ("cuda", "bf16", 1), make_room=True)
    cache.get(vae, vae.model, ("cuda", "bf16", 1), make_room=True)
    assert events == [("free", int(2 * n / comfy_nodes.DEVICE_BUDGET_SHARE), torch.device("cuda", 1)),
                      ("build", "bf16")]
    events.clear()
    cache.get(vae, vae.model, ("cuda", "fp32", 0))
    assert events == [("build", "fp32")]
    events.clear()
    cache.get(vae, vae.model, ("cuda", "fp32", 0), make_room=False)
    assert not events
    events.clear()
    cache.get(vae, vae.model, ("cuda", "fp32", 1), make_room=True)  # fp32 weights: 4 bytes each
    assert events == [("free", int(4 * n / comfy_nodes.DEVICE_BUDGET_SHARE), torch.device("cuda", 1)),
                      ("build", "fp32")]


def test_core_vae_node_decodes_every_video_of_a_batch():
    from helpers import load_fixture
    from standin_wanvae import module_tree
    from wanvideo_vae.comfy_nodes import WanCoreVAENativeDecode
    weights, data = load_fixture("tiny")

    class CoreVAE:
        first_stage_model = module_tree(weights)

    z = torch.from_numpy(data["latents"])[None]
    (one,) = WanCoreVAENativeDecode().decode({"samples": z}, CoreVAE(), 512, False)
    (two,) = WanCoreVAENativeDecode().decode({"samples": torch.cat([z, -z])}, CoreVAE(), 512, False)
    assert two.shape[0] == 2 * one.shape[0] and torch.equal(two[:one.shape[0]], one)
    assert not torch.equal(two[one.shape[0]:], one)


def _core_vae_and_latents():
    from standin_wanvae import module_tree
    weights, data = load_fixture("tiny")

    class CoreVAE:
        first_stage_model = module_tree(weights)

    unnormalized = data["latents"] * data["std"][:, None, None, None] + data["mean"][:, None, None, None]
    return CoreVAE(), torch.from_numpy(unnormalized), _expected(data["expected_raw"].transpose(1, 2, 3, 0), "default")


def test_core_vae_node_decodes_image_latents_as_core_does():
    """[B, 16, h, w] (Qwen-Image's VAE is a Wan 2.1 VAE): each a one-frame video, [B, H, W, 3] out; a
    video's first frame depends on its first latent frame only, so it is the fixture's first frame."""
    vae, z, expected = _core_vae_and_latents()
    first = z[:, 0]
    (one,) = WanCoreVAENativeDecode().decode({"samples": first[None]}, vae, 64, True)
    assert tuple(one.shape) == (1,) + expected.shape[1:]
    assert np.abs(one.numpy() - expected[:1]).max() <= NODE_TOL
    (two,) = WanCoreVAENativeDecode().decode({"samples": torch.stack([first, z[:, 1]])}, vae, 512, False)
    assert tuple(two.shape) == (2,) + expected.shape[1:] and np.abs(two[:1].numpy() - expected[:1]).max() <= NODE_TOL
    assert np.abs(two[1].numpy() - two[0].numpy()).max() > 0.1  # the second image's own decode


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_core_vae_node_takes_a_nested_latent_as_core_vae_decode_does():
    vae, z, expected = _core_vae_and_latents()
    nested = torch.nested.nested_tensor([z[None], -z[None]])
    (images,) = WanCoreVAENativeDecode().decode({"samples": nested}, vae, 64, True)
    assert np.abs(images.numpy() - expected).max() <= NODE_TOL  # the first of its tensors


def test_core_vae_node_leaves_images_where_and_as_core_vae_does():
    """Newer comfy.sd.VAE: output_device (the GPU with --gpu-only) and vae_output_dtype() (float16 with
    --fp16-intermediates); older ones, float32 on the CPU."""
    vae, z, expected = _core_vae_and_latents()
    vae.output_device, vae.vae_output_dtype = torch.device("cpu"), lambda: torch.float16
    (images,) = WanCoreVAENativeDecode().decode({"samples": z[None]}, vae, 64, True)
    assert images.dtype == torch.float16 and images.device.type == "cpu"
    assert np.abs(images.float().numpy() - expected).max() <= 1e-3  # float16 rounding of [0, 1]


def test_core_node_sits_beside_core_vae_decode(monkeypatch):
    import types
    from wanvideo_vae import comfy_nodes
    monkeypatch.delitem(sys.modules, "nodes", raising=False)
    assert comfy_nodes._core_vae_decode_category() == "latent"  # outside ComfyUI
    nodes = types.ModuleType("nodes")
    nodes.VAEDecode = type("VAEDecode", (), {"CATEGORY": "model/latent"})
    monkeypatch.setitem(sys.modules, "nodes", nodes)
    assert comfy_nodes._core_vae_decode_category() == "model/latent"
