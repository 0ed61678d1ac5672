"""Writing a file in one step: it is made under a temporary name beside its target, then renamed over it."""
import errno
import os
import secrets
import stat
import sys
import time

REPLACE_TRIES = 10  # Windows: a virus scanner or indexer may hold the new file a moment, a player the old one
NAME_MAX = 255  # the longest file name: bytes on Linux and macOS, UTF-16 units (never more) on Windows


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


def name_length(name):
    """The length of a file name as the file system counts it against NAME_MAX: UTF-16 units on Windows
    (os.fsencode gives UTF-8 there, 3 bytes for a CJK character), bytes elsewhere."""
    if sys.platform == "win32":
        return len(name.encode("utf-16-le", "surrogatepass")) // 2
    return len(os.fsencode(name))


def target_of(path):
    """The file a write to `path` changes: where a symbolic link leads (replacing the link itself would leave
    the file it names as it was), else `path`."""
    return os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)


def temp_path(path):
    """A new hidden name beside the file `path` names (target_of) for the file that will replace it:
    `.name.1a2b3c4d.part`, with the name shortened where the whole would be longer than a folder takes."""
    folder, name = os.path.split(target_of(path))
    tag = f".{secrets.token_hex(4)}.part"
    while name and name_length("." + name + tag) > NAME_MAX:
        name = name[:-1]
    return os.path.join(folder, "." + name + tag)


def keep_mode(tmp, target):
    """The permissions of the file `target` (where there is one) given to `tmp`, which replaces it: a new
    file would take the umask's, making a private file readable to others, say."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


def check_target(path):
    """write_atomically(path, ...) can make its file and put it at `path`, tried without changing
    anything: the folder is there and takes a new file of the temporary name, and what is at `path`
    already is a file that opens for writing (not a folder, a device or a pipe; not locked or
    read-only). Raises an OSError naming `path` with the reason in strerror."""
    folder = os.path.dirname(target_of(path))
    if not os.path.isdir(folder):
        there = os.path.exists(folder)
        raise OSError(errno.ENOTDIR if there else errno.ENOENT,
                      f"the folder {folder} {'is a file, not a folder' if there else 'does not exist'}", path)
    if os.path.isdir(path):
        raise OSError(errno.EISDIR, "is a folder", path)
    if name_length(os.path.basename(path)) > NAME_MAX:
        unit = "characters" if sys.platform == "win32" else "bytes"
        raise OSError(errno.ENAMETOOLONG, f"the name is longer than a folder takes ({NAME_MAX} {unit})", path)
    if os.path.exists(path):
        if not os.path.isfile(path):  # a device or a pipe: replacing it would not write to it
            raise OSError(errno.EINVAL, "is not a regular file (a device or a pipe)", path)
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            raise OSError(e.errno, f"cannot be overwritten ({e.strerror or e})", path) from None
    try:
        make_temp_file(path)
    except OSError as e:
        raise OSError(e.errno, f"the folder {folder} does not take a new file ({e.strerror or e})", path) from None


def make_temp_file(path):
    """Makes and removes the temporary file write_atomically(path) would make, or raises the OSError of
    making it (os.access does not see Windows' ACLs)."""
    tmp = temp_path(path)
    with open(tmp, "xb"):
        pass
    remove_quietly(tmp)


def write_atomically(path, write):
    """write(tmp) makes the file at a temporary path in `path`'s folder, which then replaces `path`. A
    write that fails (a full disk, an encoder's error, an interrupt) leaves no partial file behind, and
    a file already at `path` as it was, and the file replaced keeps its permissions. A symbolic link at
    `path` stays, and the file it leads to is replaced. An OSError of the write or the rename comes out
    with `path` as its filename and a reason in strerror."""
    target = target_of(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        keep_mode(tmp, target)
        replace(tmp, target)
    except OSError as e:
        remove_quietly(tmp)
        raise OSError(e.errno, e.strerror or str(e) or type(e).__name__, path) from None
    except BaseException:
        remove_quietly(tmp)
        raise
