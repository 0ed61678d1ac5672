"""Writing a file in one step: it is made under a temporary name beside its target, then renamed over it."""
import os
import secrets
import sys
import time

REPLACE_TRIES = 10  # Windows: a virus scanner or indexer may hold the new file a moment, a player the old one


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def replace(tmp, path, tries=REPLACE_TRIES):
    """os.replace, tried again for a few seconds where Windows refuses it for an open handle."""
    for attempt in range(tries):
        try:
            return os.replace(tmp, path)
        except PermissionError:
            if sys.platform != "win32" or attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def write_atomically(path, write):
    """write(tmp) makes the file at a temporary path in `path`'s folder, which then replaces `path`. A
    write that fails (a full disk, an encoder's error, an interrupt) leaves no partial file behind, and
    a file already at `path` as it was. An OSError of the write or the rename comes out with `path` as
    its filename and a reason in strerror."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
    try:
        write(tmp)
        replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise OSError(e.errno, e.strerror or str(e) or type(e).__name__, path) from None
    except BaseException:
        remove_quietly(tmp)
        raise
