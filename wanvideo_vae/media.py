"""Reading latents and writing frames: .npy / .safetensors / .pt latents in; .mp4 (H.264 through the
optional imageio-ffmpeg), .avi (uncompressed, no dependency), PNG folders, .npy and contact sheets out.
PNG and AVI are written here with zlib and struct, so the core install needs nothing more."""
import contextlib
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from fractions import Fraction

import numpy as np

from ._C import WanVAEError
from .atomic import check_target, make_temp_file, write_atomically
from .tracebacks import keeps_nothing_on_error
from .weights import check_input_file, load_safetensors, safetensors_names, torch_load

LATENT_KEYS = ("samples", "latents", "latent", "latent_tensor")  # the last: ComfyUI's Save Latent (.latent)


def _latent_key(names, path):
    for key in LATENT_KEYS:
        if key in names:
            return key
    if len(names) == 1:
        return next(iter(names))
    if not names:
        raise WanVAEError(f"{path}: holds no tensors (latents expected, named 'samples' or 'latents')")
    raise WanVAEError(f"{path}: holds {len(names)} tensors; name the latents 'samples' or 'latents'")


def _load_npy(path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):  # a zip: an .npz archive under an .npy name
        raise WanVAEError(f"{path}: an .npz archive, not one NumPy array (.npy)")
    if magic != b"\x93NUMPY":
        raise WanVAEError(f"{path}: not a NumPy array file (.npy files begin with \\x93NUMPY)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise WanVAEError(f"{path}: holds Python objects, not an array of numbers") from None
        raise WanVAEError(f"{path}: not a readable NumPy array file ({e})") from None
    except (EOFError, OSError) as e:
        raise WanVAEError(f"{path}: not a readable NumPy array file ({e or type(e).__name__})") from None


def _latent_tensor(obj, path):
    """obj where it is a tensor: a .pt file may hold lists, numbers, strings."""
    import torch  # torch_load has read the file with it
    if isinstance(obj, torch.Tensor):
        return obj
    kind = type(obj).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    raise WanVAEError(f"{path}: holds {article} {kind}, not a tensor of latents (or a dict with one)")


@keeps_nothing_on_error
def load_latents(path):
    """Latents from .npy, .safetensors (tensor 'samples' / 'latents', or the only one), ComfyUI's
    .latent (Save Latent) or .pt / .pth (a tensor or a ComfyUI LATENT-style dict with 'samples').
    Returns an array or tensor."""
    path = os.fsdecode(path)  # a str, also from a bytes path
    check_input_file(path)
    kind = os.path.splitext(path)[1].lower()
    if kind == ".npy":
        return _load_npy(path)
    if kind in (".safetensors", ".latent"):
        key = _latent_key(safetensors_names(path), path)
        return load_safetensors(path, {key})[key]
    if kind in (".pt", ".pth"):
        obj = torch_load(path)
        return _latent_tensor(obj[_latent_key(list(obj), path)] if isinstance(obj, dict) else obj, path)
    raise WanVAEError(f"{path}: unknown latents format (expected .npy, .safetensors, .latent, .pt or .pth)")


def to_uint8(frames):
    """Floats in [0, 1] -> uint8 (it takes a float copy of its input: give it a frame at a time); uint8
    frames (a decode's dtype=np.uint8, made by the same rule) are returned as they are."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    out = np.clip(frames, 0.0, 1.0)
    out *= 255.0
    out += 0.5
    return out.astype(np.uint8)


def _uint8_frames(frames):
    """The frames of [F, H, W, 3] floats as uint8 images, one at a time: a long video's frames are
    GiBs, and a converted copy of all of them would be as large again."""
    return (to_uint8(frame) for frame in frames)


def png_bytes(image):
    """An RGB uint8 [H, W, 3] image as PNG bytes."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _write_bytes(path, data):
    """`data` into a new file at `path`, in one step (write_atomically)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    write_atomically(path, write)


PNG_FRAME = "frame_{:05d}.png"


def write_png_dir(frames, folder):
    """A PNG a frame: frame_00000.png, frame_00001.png, ... Frames of an earlier, longer video under
    the names that follow are removed, so the folder's frames are this video's alone; a write that
    fails midway removes them from its frame on, leaving the new video's first frames, not a mix."""
    os.makedirs(folder, exist_ok=True)
    written = 0
    try:
        for img in _uint8_frames(frames):
            _write_bytes(os.path.join(folder, PNG_FRAME.format(written)), png_bytes(img))
            written += 1
    except BaseException:
        _remove_frames_from(folder, written, quietly=True)
        raise
    _remove_frames_from(folder, written)


def _remove_frames_from(folder, first, quietly=False):
    """Removes frame `first` and those numbered after it, up to the first one missing."""
    path = os.path.join(folder, PNG_FRAME.format(first))
    while os.path.isfile(path):
        try:
            os.remove(path)
        except OSError:
            if quietly:  # the write's own error is the one to report
                return
            raise
        first += 1
        path = os.path.join(folder, PNG_FRAME.format(first))


AVI_MAX_BYTES = 2**32 - 1  # a RIFF file's size field is 32 bits (AVI 1.0, what this writer makes)


def _avi_frame_bytes(h, w):
    return (w * 3 + 3) // 4 * 4 * h  # rows padded to 4 bytes


def _avi_file_bytes(n, h, w):
    """Bytes of write_avi's file for n frames of h x w: headers (224), then a chunk header (8) and the
    pixels of each frame."""
    return 224 + n * (8 + _avi_frame_bytes(h, w))


def check_avi_size(n, h, w, out="the .avi"):
    size = _avi_file_bytes(n, h, w)
    if size > AVI_MAX_BYTES:
        frames = f"1 frame of {w} x {h} makes" if n == 1 else f"{n} frames of {w} x {h} make"
        raise WanVAEError(f"{out}: {frames} a {size / 2**30:.1f} GiB uncompressed .avi, past the format's 4 GiB; "
                          "write .mp4, a PNG folder or .npy")


def write_avi(frames, path, fps):
    """Uncompressed 24-bit AVI (RIFF, 'DIB ' frames, bottom-up BGR rows): plays in VLC, ffmpeg, browsers'
    players. Written a frame at a time."""
    n, h, w, _ = frames.shape
    check_avi_size(n, h, w, path)
    row = (w * 3 + 3) // 4 * 4
    size = _avi_frame_bytes(h, w)
    bmp = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, size, 0, 0, 0, 0)
    rate = Fraction(fps).limit_denominator(1001)  # players time frames by strh's rate / scale: 12.5 = 25 / 2
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"DIB ", 0, 0, 0, 0, rate.denominator, rate.numerator, 0, n,
                       size, 0xFFFFFFFF, 0, 0, 0, w, h)
    byte_rate = min(round(size * fps), 0xFFFFFFFF)  # advisory, and 32-bit: 4.3 MB frames at 1000 fps pass it
    avih = struct.pack("<IIIIIIIIII4I", round(1e6 / fps), byte_rate, 0, 0, n, 0, 1, size, w, h, 0, 0, 0, 0)

    def chunk(tag, data):
        return tag + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")

    def lst(kind, data):
        return b"LIST" + struct.pack("<I", len(data) + 4) + kind + data

    pad = b"\x00" * (row - w * 3)
    hdrl = lst(b"hdrl", chunk(b"avih", avih) + lst(b"strl", chunk(b"strh", strh) + chunk(b"strf", bmp)))
    movi_bytes = 4 + n * (8 + size)
    head = b"AVI " + hdrl + b"LIST" + struct.pack("<I", movi_bytes) + b"movi"
    assert 8 + len(head) + n * (8 + size) == _avi_file_bytes(n, h, w)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"RIFF" + struct.pack("<I", len(head) + n * (8 + size)) + head)
            for img in _uint8_frames(frames):  # size is even (rows of 4 bytes): no chunk padding
                f.write(chunk(b"00db", b"".join(img[y, :, ::-1].tobytes() + pad for y in range(h - 1, -1, -1))))

    write_atomically(path, write)


def have_mp4():
    try:
        _ffmpeg_exe()
    except WanVAEError:
        return False
    return True


MP4_NEEDS_EXTRA = ("writing .mp4 needs the video extra: pip install 'wanvideo-vae[video]' "
                   "(or write .avi, a PNG folder or .npy)")
MP4_CRF = 10  # H.264 quality (0 lossless, 51 worst): near-transparent for 8-bit frames


def _ffmpeg_exe():
    try:
        import imageio_ffmpeg
    except ImportError:
        raise WanVAEError(MP4_NEEDS_EXTRA) from None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:  # imageio-ffmpeg without its bundled ffmpeg, and none on PATH
        raise WanVAEError(f"writing .mp4 needs ffmpeg, which imageio-ffmpeg did not find ({e}); install "
                          "ffmpeg or set IMAGEIO_FFMPEG_EXE (or write .avi, a PNG folder or .npy)") from None
    found = shutil.which(exe)  # imageio-ffmpeg returns IMAGEIO_FFMPEG_EXE unchecked
    if not found:
        raise WanVAEError(f"writing .mp4 needs ffmpeg, and {exe!r} (from imageio-ffmpeg, or IMAGEIO_FFMPEG_EXE) "
                          "is not a program that can run here (or write .avi, a PNG folder or .npy)")
    return found


def _last_line(log, path):
    log.seek(0)
    lines = [line.strip() for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].replace(path, "the output") if lines else "no message"


def _run_ffmpeg(frames, path, fps):
    """The frames as H.264 (yuv420p, which players expect, needs even sizes: edge rows and columns are
    repeated) in an .mp4 at `path`, by the ffmpeg of imageio-ffmpeg fed on its stdin. Its exit status
    is checked (imageio-ffmpeg's writer does not): a failure is an OSError with ffmpeg's message."""
    _, h, w, _ = frames.shape
    cmd = [_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w + w % 2}x{h + h % 2}",
           "-r", str(Fraction(fps).limit_denominator(1001)), "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", "-crf", str(MP4_CRF), "-f", "mp4", path]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nobody need read it while ffmpeg runs
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        except OSError as e:
            raise OSError(None, f"could not run imageio-ffmpeg's ffmpeg ({e})") from None
        fed = None
        try:
            for img in _uint8_frames(frames):
                proc.stdin.write(np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge"))
        except OSError as e:  # ffmpeg stopped reading: its status and message say why
            fed = e
        except BaseException:  # Ctrl-C, a cancelled prompt: no video
            proc.kill()
            raise
        finally:  # the pipe closed however this ends (not left to the garbage collector), ffmpeg waited for
            with contextlib.suppress(OSError):  # flushing into an ffmpeg that stopped reading
                proc.stdin.close()
            code = proc.wait()
        if code:
            raise OSError(None, f"ffmpeg failed: {_last_line(log, path)}")
        if fed:
            raise fed


def write_mp4(frames, path, fps):
    write_atomically(path, lambda tmp: _run_ffmpeg(frames, tmp, fps))


def contact_sheet(frames, path, columns=6, max_frames=24):
    """A PNG grid of up to max_frames evenly spaced frames."""
    n = frames.shape[0]
    pick = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))
    imgs = to_uint8(frames[pick])
    k, h, w, _ = imgs.shape
    cols = min(columns, k)
    rows = (k + cols - 1) // cols
    sheet = np.full((rows * (h + 4) + 4, cols * (w + 4) + 4, 3), 32, np.uint8)
    for i, img in enumerate(imgs):
        y, x = 4 + (i // cols) * (h + 4), 4 + (i % cols) * (w + 4)
        sheet[y:y + h, x:x + w] = img
    with _naming_write_errors(path):
        _write_bytes(path, png_bytes(sheet))


def output_kind(out):
    """An output name's kind: its extension in lower case ('.mp4', '.avi', '.npy'), '' for a PNG folder."""
    return os.path.splitext(out)[1].lower()  # a name ending in / has no extension


def check_file_target(out):
    """A file can be written at `out`, tried before a decode rather than after it (atomic.check_target)."""
    try:
        check_target(out)
    except OSError as e:
        raise WanVAEError(f"{out}: {e.strerror}") from None


def _check_png_folder(out):
    """PNG frames can go into `out`: a folder there takes files, or the nearest folder above takes
    the new ones (which are made with their parents)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise WanVAEError(f"{out}: exists and is not a folder (PNG frames go into a folder)")
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        if os.path.dirname(existing) == existing:  # a drive or network share that is not there (Windows)
            raise WanVAEError(f"{out}: {existing} does not exist")
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WanVAEError(f"{out}: {existing} is a file, not a folder")
    try:
        make_temp_file(os.path.join(existing, PNG_FRAME.format(0)))
    except OSError:
        raise WanVAEError(f"{out}: the folder {existing} is not writable") from None


def check_output(out, frames_shape=None):
    """Fails early (before a decode) on an output the writers cannot produce; with the frames' shape
    (F, H, W), also on one too large for its format."""
    out = os.fspath(out)
    kind = output_kind(out)
    if kind and kind not in (".mp4", ".avi", ".npy"):
        raise WanVAEError(f"{out}: unknown output format (use .mp4, .avi, .npy, or a folder name for PNGs; "
                          "end a folder name that has a dot with /)")
    if kind == ".mp4":
        _ffmpeg_exe()  # raises what is missing
    if kind == ".avi" and frames_shape is not None:
        check_avi_size(*frames_shape[:3], out)
    if kind:
        check_file_target(out)
    else:
        _check_png_folder(out)


def write_npy(frames, path):
    """float32 [F, H, W, 3] as an .npy file, a frame at a time (np.save writes real files in one call,
    whose error on a full disk says neither why nor where); uint8 frames are written as they are."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = frames.astype(np.float32, copy=False)  # no copy of float32 frames
    header = {"descr": np.lib.format.dtype_to_descr(frames.dtype), "fortran_order": False, "shape": frames.shape}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for frame in frames:
                f.write(np.ascontiguousarray(frame))

    write_atomically(path, write)


@contextlib.contextmanager
def _naming_write_errors(out):
    """An OSError of writing `out` as a WanVAEError naming the file and the reason."""
    try:
        yield
    except OSError as e:
        raise WanVAEError(f"{e.filename or out}: could not write it ({e.strerror or e})") from None


WRITERS = {".mp4": write_mp4, ".avi": write_avi, ".npy": lambda frames, out, fps: write_npy(frames, out)}


def write_frames(frames, out, fps):
    """By the output's name: .mp4, .avi, .npy (float32 [F, H, W, 3] as decoded), else a PNG folder. A
    file is written under a temporary name and renamed when complete: one that fails midway (a full
    disk) leaves nothing behind."""
    out = os.fspath(out)
    check_output(out, frames.shape)
    kind = output_kind(out)
    with _naming_write_errors(out):
        if kind:
            WRITERS[kind](frames, out, fps)
        else:
            write_png_dir(frames, out)
