"""ComfyUI entry point of the wanvideo_vae node pack.

Clone this repository into ComfyUI/custom_nodes and run `python -m pip install .` in it with ComfyUI's
Python (ComfyUI-Manager does that through install.py); ComfyUI then loads this file and finds
NODE_CLASS_MAPPINGS. The nodes live in the installed
package (wanvideo_vae.comfy_nodes), which carries the compiled decoder."""
import importlib
import importlib.machinery
import importlib.util
import os
import sys

_PACKAGE = "wanvideo_vae"
_HERE = os.path.dirname(os.path.realpath(__file__))


def _has_extension(spec):
    """True for a spec of the package whose compiled core sits beside it (installed or built in place)."""
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if any(f.startswith("_C.") and f.endswith((".so", ".pyd")) for f in os.listdir(folder)):
            return True
    return False


def _shows_this_checkout(entry):
    """Whether sys.path entry finds this checkout as the package: this folder (its wanvideo_vae/ sources),
    or the folder holding it (custom_nodes/) where the clone is named after the package."""
    folder = os.path.realpath(entry or os.getcwd())
    return folder == _HERE or os.path.realpath(os.path.join(folder, _PACKAGE)) == _HERE


def _spec_past_this_checkout():
    """The package's spec from elsewhere than this checkout's root: the first of the other sys.path
    entries whose package has its compiled core (another copy of the sources may come earlier), then
    the import system's other finders (an editable install's maps the name to its sources)."""
    for entry in sys.path:
        if not _shows_this_checkout(entry):
            spec = importlib.machinery.PathFinder.find_spec(_PACKAGE, [entry])
            if _has_extension(spec):
                return spec
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
            continue
        try:
            spec = finder.find_spec(_PACKAGE, None)
        except Exception:  # noqa: BLE001 - another pack's finder failing is not ours to report
            continue
        if _has_extension(spec):
            return spec
    return None


def _installed_package():
    # Older ComfyUI registers a custom node folder under its folder name; when that name is the
    # package's own, this file stands in sys.modules where the installed package belongs.
    if sys.modules.get(_PACKAGE) is sys.modules.get(__name__) and __name__ == _PACKAGE:
        del sys.modules[_PACKAGE]
    spec = importlib.util.find_spec(_PACKAGE)
    if not _has_extension(spec):
        # this checkout came first on sys.path without a compiled core: look past it
        spec = _spec_past_this_checkout()
        if spec is None:
            raise ImportError(f"the {_PACKAGE} package is not installed in ComfyUI's Python: run "
                              f"`python install.py` (or `python -m pip install .`) in {_HERE} with ComfyUI's "
                              "Python, then restart ComfyUI")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_PACKAGE] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(_PACKAGE)


_installed_package()
_nodes = importlib.import_module(_PACKAGE + ".comfy_nodes")

NODE_CLASS_MAPPINGS = _nodes.NODE_CLASS_MAPPINGS
NODE_DISPLAY_NAME_MAPPINGS = _nodes.NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
