"""What an error raised through the package keeps alive.

A traceback holds the frames it passed through, and they their locals. A REPL (sys.last_value), a
notebook or a host that logs errors keeps the last one, and with it what the package's frames held: a
checkpoint's memory map (Windows keeps the file locked while it is mapped: it cannot be replaced),
the latents of a long video, converted weights."""
import functools
import os

_PACKAGE = os.path.normcase(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _ours(frame):
    return os.path.normcase(os.path.abspath(frame.f_code.co_filename)).startswith(_PACKAGE)


def _forget_locals(error):
    """Clears the locals of the package's frames that `error` (and the errors chained to it) passed
    through and that have returned; a caller's frames, and what runs still, keep theirs."""
    pending, seen = [error], set()
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            if _ours(tb.tb_frame):
                try:
                    tb.tb_frame.clear()
                except RuntimeError:  # still running (the wrapper's own frame)
                    pass
            tb = tb.tb_next
        pending += [e.__cause__, e.__context__]


def keeps_nothing_on_error(func):
    """func, whose error keeps none of the package's locals (see the module's note): its arguments
    and what it made of them go with the call, as on success."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BaseException as e:
            args = kwargs = None  # noqa: F841  (this frame is in the traceback too)
            _forget_locals(e)
            raise
    return wrapper
