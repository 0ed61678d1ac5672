"""Builds and installs the wanvideo_vae package into the Python that runs this file.

ComfyUI-Manager and the Comfy Registry run a node pack's install.py with ComfyUI's own Python after
fetching or updating it; this does what the README asks of a manual install, `python -m pip install .`
in this folder, so the compiled decoder is there when ComfyUI loads the pack, then says which
backends it got (pip hides the build's own account of it). Where the build found no nvcc and
ComfyUI's PyTorch is built for CUDA 13, it installs that CUDA's nvcc from PyPI and builds again, so
the CUDA backend is there too. Exit status: pip's for the first build (a CPU-only install stands
where nvcc cannot be had)."""
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def embedded_python(executable=sys.executable):
    """Whether this is an embeddable Python (ComfyUI's portable python_embeded: a python3XX._pth beside
    it). It ignores PYTHONPATH, through which pip's build isolation hands the build its requirements,
    so an isolated build there would run with this Python's own packages, which lack them."""
    return bool(glob.glob(os.path.join(glob.escape(os.path.dirname(executable)), "python*._pth")))


def build_requirements(pyproject=os.path.join(HERE, "pyproject.toml")):
    """The [build-system] requires of pyproject.toml."""
    with open(pyproject, encoding="utf-8") as f:
        text = f.read()
    try:
        import tomllib
    except ImportError:  # Python 3.10: the quoted strings of the list after "requires =", comments dropped
        section = text.split("[build-system]", 1)[1].split("\n[", 1)[0]
        listed = re.search(r"requires\s*=\s*\[(.*?)\]", section, re.S).group(1)
        return re.findall(r"""["']([^"']+)["']""", "\n".join(line.split("#")[0] for line in listed.splitlines()))
    return tomllib.loads(text)["build-system"]["requires"]


BUILD_FAILED = ("the build failed (exit status %d). It needs a C compiler (Visual Studio Build Tools on Windows, gcc "
                "or clang elsewhere); the CUDA backend also needs the CUDA toolkit. See the README's 'Building the "
                "CUDA backend' and 'Windows'.")
REQUIREMENTS_FAILED = ("pip could not install the build's requirements (exit status %d); it needs the network, or "
                       "an index it can reach.")


# setuptools 82 removed pkg_resources, which other custom nodes sharing ComfyUI's Python may still import
SETUPTOOLS_WITH_PKG_RESOURCES = 82


def installed_setuptools():
    """(major, minor) of this Python's setuptools, or None without one."""
    try:
        from importlib.metadata import version
        return tuple(int(part) for part in re.findall(r"\d+", version("setuptools"))[:2])
    except Exception:  # noqa: BLE001 (not installed, or metadata unreadable: pip installs it)
        return None


def requirements_for_this_python(requires, setuptools):
    """The build's requirements as pip installs them into the Python's own packages (an embeddable Python's
    build runs without isolation), where ComfyUI and every custom node use them too: a setuptools (version
    `setuptools`) that meets the build's minimum stays as it is, and one below it goes to the newest that
    still has pkg_resources, not to the newest."""
    kept = []
    for requirement in requires:
        least = re.fullmatch(r"setuptools\s*>=\s*(\d+)", requirement)
        if least and int(least.group(1)) < SETUPTOOLS_WITH_PKG_RESOURCES:
            if setuptools is not None and setuptools >= (int(least.group(1)),):
                continue
            requirement += ",<%d" % SETUPTOOLS_WITH_PKG_RESOURCES
        kept.append(requirement)
    return kept


def pip_steps(python=sys.executable, folder=HERE, embedded=False, setuptools=None):
    """(what it does, pip command, what its failure says): pip install of this folder; in an embeddable
    Python (whose setuptools is `setuptools`), its build requirements installed first (see
    requirements_for_this_python) and the build run without isolation."""
    if not embedded:
        return [("building the native decoder", [python, "-m", "pip", "install", folder], BUILD_FAILED)]
    requires = requirements_for_this_python(build_requirements(), setuptools)
    return [("installing the build's requirements", [python, "-m", "pip", "install"] + requires,
             REQUIREMENTS_FAILED),
            ("building the native decoder", [python, "-m", "pip", "install", "--no-build-isolation", folder],
             BUILD_FAILED)]


def missing_python_headers(paths=None, windows=sys.platform == "win32", base=sys.base_prefix):
    """What this Python lacks to compile an extension: ComfyUI's portable Windows build (python_embeded)
    ships without its include folder and import library. None when nothing is missing."""
    paths = paths or sysconfig.get_paths()
    missing = []
    if not os.path.isfile(os.path.join(paths["include"], "Python.h")):
        missing.append(os.path.join(paths["include"], "Python.h"))
    if windows:
        lib = os.path.join(base, "libs", "python%d%d.lib" % sys.version_info[:2])
        if not os.path.isfile(lib):
            missing.append(lib)
    if not missing:
        return None
    what = " and ".join(missing) + (" is" if len(missing) == 1 else " are")
    if windows:
        return ("this Python cannot compile extensions: %s missing. ComfyUI's portable build ships without them: "
                "copy the 'include' and 'libs' folders from the python.org installer of Python %d.%d into %s, "
                "then run this again." % (what, sys.version_info[0], sys.version_info[1], base))
    return ("this Python cannot compile extensions: %s missing. Install its development headers (the "
            "python%d.%d-dev or python3-devel package of your distribution), then run this again."
            % (what, sys.version_info[0], sys.version_info[1]))


def installed_report(run=subprocess.run):
    """(what the installed package reports of itself and of PyTorch: `python -m wanvideo_vae info --json
    --no-plan`, or None, why not). Run from a neutral folder: in this one (or custom_nodes/, beside a
    clone named wanvideo_vae) the sources would be imported instead of the installed package."""
    command = [sys.executable, "-m", "wanvideo_vae", "info", "--json", "--no-plan"]
    try:
        r = run(command, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=600)
        if r.returncode == 0:
            return json.loads(r.stdout), None
        said = (r.stderr or r.stdout).strip().splitlines()
        return None, "%s exited with status %d%s" % (" ".join(command[1:]), r.returncode,
                                                      (": " + said[-1]) if said else "")
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return None, "%s: %s" % (" ".join(command[1:]), e)


def say_backends(report, problem):
    if report is None:
        print("wanvideo_vae: installed, but it could not say which backends it has (%s)" % problem, file=sys.stderr)
        return
    cuda = report["backends"]["cuda"]
    print("wanvideo_vae: installed; CUDA backend: " + ("usable" if cuda["usable"] else cuda["reason"]), flush=True)
    for warning in cuda.get("build_warnings", []):
        print("wanvideo_vae: warning: " + warning, flush=True)


# setup.py's reason for a CPU-only build where it finds no nvcc, as backends() gives it (tests/test_build.py
# holds the two together)
NVCC_NOT_FOUND = "not built: nvcc not found"
# the parts of a CUDA toolkit PyPI has as wheels, from CUDA 13 on: nvcc, its compiler parts (pinned with it:
# an older nvcc beside a newer nvvm stops in ptxas) and the CCCL headers the CUDA headers include
NVCC_WHEELS = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl")


def nvcc_wheels(report, linux):
    """The pip requirements of the nvcc of PyTorch's CUDA (13.0: nvidia-cuda-nvcc==13.0.* and its parts)
    where the build found no nvcc and PyTorch is built for CUDA 13 or newer on Linux (its runtime, cuDNN
    and cuBLAS wheels are then installed: nvcc is all the build lacks); None otherwise: CUDA 12's nvcc
    wheel holds no nvcc, PyTorch's Windows builds keep their DLLs in torch\\lib without the cuDNN headers
    the build also needs, and WANVIDEO_CUDA=0 records another reason."""
    if not linux or report is None or not report["backends"]["cuda"]["reason"].startswith(NVCC_NOT_FOUND):
        return None
    torch_cuda = (report.get("torch") or {}).get("cuda") or ""
    found = re.match(r"(\d+)\.(\d+)", torch_cuda)
    if not found or int(found.group(1)) < 13:
        return None
    return ["%s==%s.%s.*" % (name, found.group(1), found.group(2)) for name in NVCC_WHEELS]


def tolerant_console():
    """wanvideo_vae/console.py's, loaded by its path: the package cannot be imported before it is built."""
    spec = importlib.util.spec_from_file_location("_wanvideo_vae_console",
                                                  os.path.join(HERE, "wanvideo_vae", "console.py"))
    console = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(console)
    console.tolerant_console()


def run_step(call, what, command, failed):
    print("wanvideo_vae: %s: %s" % (what, " ".join(command)), flush=True)
    status = call(command, cwd=HERE)
    if status:
        print("wanvideo_vae: " + failed % status, file=sys.stderr)
    return status


NVCC_FAILED = ("pip could not install nvcc (exit status %d): the decoder stays CPU-only. A CUDA toolkit (CUDA_HOME) "
               "gives the build one; then run this again.")
NVCC_UNSEEN = ("the build found no nvcc even after pip installed it (pip put it where the build does not look?): "
               "set CUDA_HOME to the folder of site-packages/nvidia/cu13 that holds bin/nvcc, then run this again.")
REBUILD_FAILED = ("the build with nvcc failed (exit status %d): the CPU-only install stands. See the README's "
                  "'Building the CUDA backend'.")


def main(call=subprocess.call, embedded=None, report=installed_report, linux=sys.platform.startswith("linux")):
    tolerant_console()
    problem = missing_python_headers()
    if problem:
        print("wanvideo_vae: " + problem, file=sys.stderr)
        return 1
    steps = pip_steps(embedded=embedded_python() if embedded is None else embedded, setuptools=installed_setuptools())
    for step in steps:
        status = run_step(call, *step)
        if status:
            return status
    state, problem = report()
    say_backends(state, problem)
    wheels = nvcc_wheels(state, linux)
    if wheels:
        print("wanvideo_vae: no nvcc here, and PyTorch is built for CUDA %s: installing its nvcc from PyPI (about "
              "100 MB) to build the CUDA backend (WANVIDEO_CUDA=0 skips it)" % state["torch"]["cuda"], flush=True)
        if run_step(call, "installing nvcc", [sys.executable, "-m", "pip", "install"] + wheels, NVCC_FAILED) or \
                run_step(call, "building again, with nvcc", steps[-1][1], REBUILD_FAILED):
            return 0  # the CPU-only install works: nvcc is a bonus, its failure said
        state, problem = report()
        say_backends(state, problem)
        if nvcc_wheels(state, linux):  # installed, yet not found: each run would install it again
            print("wanvideo_vae: warning: " + NVCC_UNSEEN, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
