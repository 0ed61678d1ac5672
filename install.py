"""Builds and installs the wanvideo_vae package into the Python that runs this file.

ComfyUI-Manager and the Comfy Registry run a node pack's install.py with ComfyUI's own Python after
fetching or updating it; this does what the README asks of a manual install, `python -m pip install .`
in this folder, so the compiled decoder is there when ComfyUI loads the pack. Exit status: pip's."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def pip_command(python=sys.executable, folder=HERE):
    return [python, "-m", "pip", "install", folder]


def main(call=subprocess.call):
    command = pip_command()
    print("wanvideo_vae: building the native decoder: " + " ".join(command), flush=True)
    status = call(command, cwd=HERE)
    if status:
        print("wanvideo_vae: the build failed (exit status %d). It needs a C compiler (Visual Studio Build Tools "
              "on Windows, gcc or clang elsewhere); the CUDA backend also needs the CUDA toolkit. See the README's "
              "'Building the CUDA backend' and 'Windows'." % status, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
