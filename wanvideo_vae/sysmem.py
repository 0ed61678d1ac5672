"""Available host memory, for the default memory budget of CPU decodes; peak sampling of any
memory reading over a block (the benchmarks' peak RSS and peak device memory)."""
import os
import re
import subprocess
import sys
import threading


class PeakSampler:
    """Highest value of read() above its value at entry while the block runs, sampled every `period`
    seconds in a thread (decodes release the GIL). grown: that rise, None when read() gives None;
    held: the value at exit less the one at entry (what the block left behind)."""

    period = 0.002

    def read(self):
        raise NotImplementedError

    def __enter__(self):
        self.base = self.peak = self.last = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _take(self):
        value = self.read()
        self.last = value
        if value is not None and self.peak is not None and value > self.peak:
            self.peak = value

    def _sample(self):
        while not self._stop.wait(self.period):
            self._take()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._take()
        return False

    @property
    def grown(self):
        return None if self.base is None else self.peak - self.base

    @property
    def held(self):
        return None if self.base is None or self.last is None else self.last - self.base


def _read_number(path):
    """The integer in a cgroup file; None when absent, unreadable or "max" (no limit)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat_values(path):
    """{name: value} of a cgroup memory.stat file ({} where there is none)."""
    values = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(" ")
                if value.strip().isdigit():
                    values[name] = int(value)
    except OSError:
        pass
    return values


# (limit, usage, memory.stat keys of the page cache the kernel reclaims before it kills) in cgroup v2
# and v1 folders
_CGROUP_FILES = (("memory.max", "memory.current", ("active_file", "inactive_file")),
                 ("memory.limit_in_bytes", "memory.usage_in_bytes", ("total_active_file", "total_inactive_file")))


def _cgroup_folders(root, proc_cgroup):
    """The process's memory cgroup folders (v2 and v1) and their ancestors up to the mount's root: a
    limit may sit on any of them (a pod's, a systemd slice's), and a container sees its own at the root."""
    tops = (root, os.path.join(root, "memory"))
    leaves = []
    try:
        with open(proc_cgroup, encoding="utf-8", errors="replace") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    leaves.append(os.path.join(root, path.lstrip("/")))
                elif "memory" in controllers.split(","):
                    leaves.append(os.path.join(root, "memory", path.lstrip("/")))
    except (OSError, ValueError):
        pass
    folders = []
    for folder in leaves + list(tops):
        folder = os.path.normpath(folder)
        while True:
            if folder not in folders:
                folders.append(folder)
            if folder in tops or len(folder) <= len(root):
                break
            folder = os.path.dirname(folder)
    return folders


def cgroup_headroom_bytes(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """Bytes the process's memory cgroups (a container's, a pod's or a slice's limit) let it take before
    the kernel's OOM killer stops it, file cache counted as free: the least any limited level leaves;
    None where none has a limit."""
    rooms = []
    for folder in _cgroup_folders(os.path.normpath(root), proc_cgroup):
        for limit_name, usage_name, cache_keys in _CGROUP_FILES:
            limit = _read_number(os.path.join(folder, limit_name))
            usage = _read_number(os.path.join(folder, usage_name))
            if limit is not None and usage is not None:
                stat = _stat_values(os.path.join(folder, "memory.stat"))
                cache = sum(stat.get(key, 0) for key in cache_keys)
                rooms.append(max(limit - max(usage - cache, 0), 0))
                break
    return min(rooms) if rooms else None


def _meminfo_available(path="/proc/meminfo"):
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def vm_stat_available(text):
    """Bytes free, speculative (free pages read ahead) and inactive (reclaimable) in macOS's `vm_stat`
    output, or None where it says no page size or none of them."""
    size = re.search(r"page size of (\d+) bytes", text)
    pages = [int(n) for n in re.findall(r"^Pages (?:free|speculative|inactive):\s+(\d+)\.", text, re.MULTILINE)]
    return int(size[1]) * sum(pages) if size and pages else None


def _macos_available():
    """macOS has no SC_AVPHYS_PAGES: the kernel's page counts, as `vm_stat` prints them."""
    try:
        return vm_stat_available(subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5).stdout)
    except (OSError, subprocess.SubprocessError):
        return None


def available_host_bytes():
    """Bytes of physical memory available to a new allocation now, or None when unknown. On Linux,
    within the memory cgroup's limit too (in a container, MemAvailable is the whole machine's); on
    Windows, within what may still be committed; on macOS, the pages vm_stat counts free or reclaimable."""
    if sys.platform == "darwin":
        return _macos_available()
    if sys.platform.startswith("linux"):
        known = [b for b in (_meminfo_available(), cgroup_headroom_bytes()) if b is not None]
        if known:
            return min(known)
    if sys.platform == "win32":
        import ctypes

        class MemoryStatusEx(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        status = MemoryStatusEx()
        status.dwLength = ctypes.sizeof(status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            # an allocation fails at the commit limit: less than the free RAM with a small page file
            return int(min(status.ullAvailPhys, status.ullAvailPageFile))
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
