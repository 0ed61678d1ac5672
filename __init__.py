"""ComfyUI entry point of the wanvideo_vae node pack.

Clone this repository into ComfyUI/custom_nodes and run `python -m pip install .` in it with ComfyUI's
Python; ComfyUI then loads this file and finds NODE_CLASS_MAPPINGS. The nodes live in the installed
package (wanvideo_vae.comfy_nodes), which carries the compiled decoder."""
import importlib
import importlib.util
import os
import sys

_PACKAGE = "wanvideo_vae"


def _installed_package():
    # Older ComfyUI registers a custom node folder under its folder name; when that name is the
    # package's own, this file stands in sys.modules where the installed package belongs.
    if sys.modules.get(_PACKAGE) is sys.modules.get(__name__) and __name__ == _PACKAGE:
        del sys.modules[_PACKAGE]
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or os.path.abspath(spec.origin or "") == os.path.abspath(__file__):
        raise ImportError(f"the {_PACKAGE} package is not installed in ComfyUI's Python: run "
                          f"`python -m pip install .` in {os.path.dirname(os.path.abspath(__file__))}")
    return importlib.import_module(_PACKAGE)


_installed_package()
_nodes = importlib.import_module(_PACKAGE + ".comfy_nodes")

NODE_CLASS_MAPPINGS = _nodes.NODE_CLASS_MAPPINGS
NODE_DISPLAY_NAME_MAPPINGS = _nodes.NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
