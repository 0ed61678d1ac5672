"""What an error raised through the package keeps alive.

A traceback holds the frames it passed through, and they their locals. A REPL (sys.last_value), a
notebook or a host that logs errors keeps the last one, and with it what those frames held: a
checkpoint's memory map (Windows keeps the file locked while it is mapped: it cannot be replaced),
the latents of a long video, converted weights. WANVIDEO_KEEP_ERROR_LOCALS=1 keeps them, for a
debugger's post-mortem."""
import functools
import os
import sys


def _forget_locals(error, outer):
    """Clears the locals of every frame that `error`, and the errors chained to it, passed through and
    that has returned; stops at `outer`, the error the caller was handling (not this call's). A context
    the error suppresses (raise ... from None) is dropped: it is never shown, and its frames (NumPy's,
    PyTorch's reading a file) held what they read."""
    pending, seen = [error], set()
    while pending:
        e = pending.pop()
        if e is None or e is outer or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            try:
                tb.tb_frame.clear()
            except RuntimeError:  # still running: the wrapper's own frame
                pass
            tb = tb.tb_next
        if e.__suppress_context__ and e.__context__ is not outer:
            e.__context__ = None
        pending += [e.__cause__, e.__context__]


def keeps_nothing_on_error(func):
    """func, whose error keeps none of the locals of the call (see the module's note): its arguments
    and what it made of them go with it, as on success. The caller's frames keep theirs."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        outer = sys.exc_info()[1]
        try:
            return func(*args, **kwargs)
        except BaseException as e:
            if os.environ.get("WANVIDEO_KEEP_ERROR_LOCALS") != "1":
                args = kwargs = None  # noqa: F841  (this frame is in the traceback too)
                _forget_locals(e, outer)
            raise
    return wrapper
