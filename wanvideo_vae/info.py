"""`python -m wanvideo_vae info`: what this installation is and can do here, for a bug report or before
a long decode: versions, the backends and why one is not usable, each GPU and whether this build runs
there, and how a decode of a given size would be planned in the memory free now."""
import importlib.util
import os
import platform
import sys

import numpy as np

from . import Decoder, WanVAEError, __version__, backends
from ._C import expected_keys
from .devices import cuda_module
from .sysmem import available_host_bytes

FULL_SIZE = (96, 16)  # dim, z_dim of the Wan 2.1 decoder: what the plans are made for


def _version(code):
    """1000 x major + 10 x minor (CUDA's own encoding) as "13.0"."""
    return f"{code // 1000}.{code % 1000 // 10}"


def _library_version(code):
    """major x 10000 + minor x 100 + patch (cuDNN 9's, and ours for cuBLAS) as "9.28.1"."""
    return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"


def _torch():
    """PyTorch's version and CUDA as this Python sees them; None where it is not installed."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - a broken torch is a finding of the report, not its failure
        return {"version": None, "error": f"{type(e).__name__}: {e}"}
    cuda = getattr(torch.version, "cuda", None)
    return {"version": torch.__version__, "cuda": cuda, "cuda_available": bool(cuda) and torch.cuda.is_available()}


def _gpus(mod, count):
    """Each visible GPU: its properties, free memory, and whether this build runs there."""
    gpus = []
    for index in range(count):
        try:
            gpu = {"index": index, **mod.device_info(index)}
        except RuntimeError as e:
            gpus.append({"index": index, "error": str(e)})
            continue
        try:
            gpu["free_memory"] = mod.mem_get_info(index)[0]
        except RuntimeError as e:  # its context cannot be made (the GPU full, say): the properties stand
            gpu["free_memory"], gpu["memory_error"] = None, str(e)
        gpus.append(gpu)
    return gpus


def _zero_weights():
    """Full-size weights of zeros: a plan needs the decoder's shapes, not its values."""
    return {key: np.zeros(shape, np.float32) for key, shape in expected_keys(*FULL_SIZE)}


def _plan(weights, shape, backend, device, precision):
    """How a decode of latents `shape` would be planned on one backend, in the memory free now (the
    weights then already loaded, as in a decode), or why it cannot be."""
    row = {"backend": backend, "device": device, "precision": precision}
    dec = None
    try:
        dec = Decoder(weights, backend=backend, device=None if device < 0 else device, precision=precision)
        p = dec.plan(*shape, enable_vae_tiling=False)
        row.update(tiles=[p["tiles_x"], p["tiles_y"]], tile_px=[p["core_x"] + 2 * p["out_halo"],
                   p["core_y"] + 2 * p["out_halo"]], arena_bytes=p["planned_bytes"], weight_bytes=p["weight_bytes"],
                   trunk_host_bytes=p["trunk_host_bytes"], conv_flops=p["conv_flops"],
                   frames=p["frames"], size=[p["width"], p["height"]])
    except (WanVAEError, MemoryError) as e:
        row["error"] = str(e)
    finally:
        if dec is not None:
            dec.close()
    return row


def collect(shape=(21, 90, 160), plans=True):
    """The report as a dict (what `info --json` prints); the plans are those of latents [16, T, h, w]
    for `shape` (T, h, w): 720p x 81 frames by default."""
    feats = backends()
    cuda = feats["cuda"]
    report = {
        "wanvideo_vae": {"version": __version__, "path": os.path.dirname(os.path.abspath(__file__))},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": _torch(),
        "host_memory_available": available_host_bytes(),
        "backends": feats,
        "gpus": [],
        "latents": [FULL_SIZE[1], *shape],
        "plans": [],
    }
    mod = cuda_module() if cuda.get("versions") else None  # the backend loads, with or without a GPU
    if mod is not None:
        cuda["archs"] = mod.built_archs()
        report["gpus"] = _gpus(mod, cuda["devices"])
    if not plans:
        return report
    weights = _zero_weights()
    for gpu in report["gpus"]:
        if gpu.get("has_code"):  # bf16 where the GPU computes in it (Ampere on), as a decode's default
            precision = "bf16" if tuple(gpu["capability"]) >= (8, 0) else "fp32"
            report["plans"].append(_plan(weights, shape, "cuda", gpu["index"], precision))
    if feats["cpu"]["usable"]:
        report["plans"].append(_plan(weights, shape, "cpu", -1, "fp32"))
    return report


def _gib(n):
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def _backend_lines(feats):
    cpu, cuda = feats["cpu"], feats["cuda"]
    yield (f"CPU backend: usable, {cpu['threads']} threads; {cpu['blas']}" if cpu["usable"]
           else f"CPU backend: not usable: {cpu['reason']}")
    if not cuda.get("versions"):
        yield f"CUDA backend: not usable: {cuda['reason']}"
    else:
        v = cuda["versions"]
        driver = _version(v["cuda_driver"]) if v["cuda_driver"] else "none"
        built = f"built for compute capability {cuda['archs']}; " if cuda.get("archs") else ""
        yield (f"CUDA backend: {built}CUDA runtime {_version(v['cuda_runtime'])}, driver {driver}, "
               f"cuDNN {_library_version(v['cudnn'])}, cuBLAS {_library_version(v['cublas'])}")
        yield (f"  usable: {cuda['devices']} GPU{'s' if cuda['devices'] != 1 else ''}" if cuda["usable"]
               else f"  not usable: {cuda['reason']}")
    for warning in cuda.get("build_warnings", []):
        yield f"  build warning: {warning}"


def _gpu_line(gpu):
    if "error" in gpu:
        return f"GPU {gpu['index']}: {gpu['error']}"
    runs = "this build runs there" if gpu["has_code"] else gpu["code_missing"]
    memory = (f"{_gib(gpu['free_memory'])} free of {_gib(gpu['total_memory'])}" if gpu["free_memory"] is not None
              else f"{_gib(gpu['total_memory'])}, free unknown ({gpu['memory_error']})")
    return (f"GPU {gpu['index']}: {gpu['name']}, compute capability {gpu['capability'][0]}.{gpu['capability'][1]}, "
            f"{gpu['multiprocessors']} multiprocessors, {memory}; {runs}")


def _flops(n):
    return f"{n / 1e12:.0f} TFLOP" if n >= 1e12 else f"{n / 1e9:.1f} GFLOP"


def _plan_line(row):
    where = f"cuda:{row['device']}" if row["backend"] == "cuda" else "cpu"
    head = f"  {where} {row['precision']}: "
    if "error" in row:
        return head + row["error"]
    tx, ty = row["tiles"]
    tiles = "untiled" if tx * ty == 1 else f"in {tx}x{ty} tiles of {row['tile_px'][0]}x{row['tile_px'][1]} px"
    trunk = f", trunk output {row['trunk_host_bytes'] / 2**20:.0f} MiB on the host" if row["trunk_host_bytes"] else ""
    return (f"{head}{tiles}; working memory {row['arena_bytes'] / 2**20:.0f} MiB + weights "
            f"{row['weight_bytes'] / 2**20:.0f} MiB{trunk}; {_flops(row['conv_flops'])} of convolutions")


def format_report(report):
    """The report as the lines `info` prints."""
    torch = report["torch"]
    if torch is None:
        torch_text = "PyTorch not installed"
    elif torch["version"] is None:
        torch_text = f"PyTorch does not import ({torch['error']})"
    else:
        cuda = f"CUDA {torch['cuda']}, {'a GPU' if torch['cuda_available'] else 'no GPU'} seen" if torch["cuda"] \
            else "a CPU build"
        torch_text = f"PyTorch {torch['version']} ({cuda})"
    lines = [f"wanvideo_vae {report['wanvideo_vae']['version']} ({report['wanvideo_vae']['path']})",
             f"Python {report['python']} on {report['platform']}; NumPy {report['numpy']}; {torch_text}",
             f"host memory available: {_gib(report['host_memory_available'])}",
             *_backend_lines(report["backends"]),
             *(_gpu_line(gpu) for gpu in report["gpus"])]
    if report["plans"]:
        z, T, h, w = report["latents"]
        frames = f"{4 * (T - 1) + 1} frame{'s' * (T > 1)}"
        lines.append(f"a decode of latents [{z}, {T}, {h}, {w}] ({frames} of {8 * w}x{8 * h}), "
                     "full-size weights, in the memory free now:")
        lines += [_plan_line(row) for row in report["plans"]]
    return lines
