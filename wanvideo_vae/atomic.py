"""Writing a file in one step: it is made under a temporary name beside its target, then renamed over it."""
import os
import secrets


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def write_atomically(path, write):
    """write(tmp) makes the file at a temporary path in `path`'s folder, which then replaces `path`. A
    write that fails (a full disk, an encoder's error, an interrupt) leaves no partial file behind, and
    a file already at `path` as it was. An OSError of the write or the rename comes out with `path` as
    its filename and a reason in strerror."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise OSError(e.errno, e.strerror or str(e) or type(e).__name__, path) from None
    except BaseException:
        remove_quietly(tmp)
        raise
