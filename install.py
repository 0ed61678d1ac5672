"""Builds and installs the wanvideo_vae package into the Python that runs this file.

ComfyUI-Manager and the Comfy Registry run a node pack's install.py with ComfyUI's own Python after
fetching or updating it; this does what the README asks of a manual install, `python -m pip install .`
in this folder, so the compiled decoder is there when ComfyUI loads the pack, then says which
backends it got (pip hides the build's own account of it). Exit status: pip's."""
import os
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def pip_command(python=sys.executable, folder=HERE):
    return [python, "-m", "pip", "install", folder]


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


BACKENDS = ("import wanvideo_vae as w; c = w.backends()['cuda']; "
            "print('wanvideo_vae: installed; CUDA backend: ' + ('usable' if c['usable'] else c['reason'])); "
            "[print('wanvideo_vae: warning: ' + m) for m in c['build_warnings']]")


def main(call=subprocess.call):
    problem = missing_python_headers()
    if problem:
        print("wanvideo_vae: " + problem, file=sys.stderr)
        return 1
    command = pip_command()
    print("wanvideo_vae: building the native decoder: " + " ".join(command), flush=True)
    status = call(command, cwd=HERE)
    if status:
        print("wanvideo_vae: the build failed (exit status %d). It needs a C compiler (Visual Studio Build Tools "
              "on Windows, gcc or clang elsewhere); the CUDA backend also needs the CUDA toolkit. See the README's "
              "'Building the CUDA backend' and 'Windows'." % status, file=sys.stderr)
        return status
    # from a neutral folder: in this one (or custom_nodes/, beside a clone named wanvideo_vae) the sources
    # would be imported instead of the installed package
    call([sys.executable, "-c", BACKENDS], cwd=tempfile.gettempdir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
