"""Available host memory, for the default memory budget of CPU decodes; peak sampling of any
memory reading over a block (the benchmarks' peak RSS and peak device memory)."""
import os
import sys
import threading


class PeakSampler:
    """Highest value of read() above its value at entry while the block runs, sampled every `period`
    seconds in a thread (decodes release the GIL). grown: that rise, None when read() gives None."""

    period = 0.002

    def read(self):
        raise NotImplementedError

    def __enter__(self):
        self.base = self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _take(self):
        value = self.read()
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


def available_host_bytes():
    """Bytes of physical memory available to a new allocation now, or None when unknown."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
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
            return int(status.ullAvailPhys)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
