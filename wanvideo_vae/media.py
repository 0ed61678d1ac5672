"""Reading latents and writing frames: .npy / .safetensors / .pt latents in; .mp4 (H.264 through the
optional imageio-ffmpeg), .avi (uncompressed, no dependency), PNG folders, .npy and contact sheets out.
PNG and AVI are written here with zlib and struct, so the core install needs nothing more."""
import os
import struct
import zlib
from fractions import Fraction

import numpy as np

from ._C import WanVAEError
from .weights import load_safetensors, torch_load

LATENT_KEYS = ("samples", "latents", "latent")


def _pick_latent(mapping, path):
    for key in LATENT_KEYS:
        if key in mapping:
            return mapping[key]
    if len(mapping) == 1:
        return next(iter(mapping.values()))
    raise WanVAEError(f"{path}: holds {len(mapping)} tensors; name the latents 'samples' or 'latents'")


def load_latents(path):
    """Latents from .npy, .safetensors (tensor 'samples' / 'latents', or the only one) or .pt / .pth
    (a tensor or a ComfyUI LATENT-style dict with 'samples'). Returns an array or tensor."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WanVAEError(f"{path}: no such file")
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            raise WanVAEError(f"{path}: not a NumPy array file ({e or type(e).__name__})") from None
    if path.endswith(".safetensors"):
        return _pick_latent(load_safetensors(path), path)
    if path.endswith((".pt", ".pth")):
        obj = torch_load(path)
        return _pick_latent(obj, path) if isinstance(obj, dict) else obj
    raise WanVAEError(f"{path}: unknown latents format (expected .npy, .safetensors, .pt or .pth)")


def to_uint8(frames):
    """[F, H, W, 3] floats in [0, 1] -> uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(image):
    """An RGB uint8 [H, W, 3] image as PNG bytes."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_png_dir(frames, folder):
    os.makedirs(folder, exist_ok=True)
    for i, img in enumerate(to_uint8(frames)):
        with open(os.path.join(folder, f"frame_{i:05d}.png"), "wb") as f:
            f.write(png_bytes(img))


def write_avi(frames, path, fps):
    """Uncompressed 24-bit AVI (RIFF, 'DIB ' frames, bottom-up BGR rows): plays in VLC, ffmpeg, browsers' players."""
    imgs = to_uint8(frames)
    n, h, w, _ = imgs.shape
    row = (w * 3 + 3) // 4 * 4
    size = row * h
    bmp = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, size, 0, 0, 0, 0)
    rate = Fraction(fps).limit_denominator(1001)  # players time frames by strh's rate / scale: 12.5 = 25 / 2
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"DIB ", 0, 0, 0, 0, rate.denominator, rate.numerator, 0, n,
                       size, 0xFFFFFFFF, 0, 0, 0, w, h)
    avih = struct.pack("<IIIIIIIIII4I", round(1e6 / fps), round(size * fps), 0, 0, n, 0, 1, size, w, h, 0, 0, 0, 0)

    def chunk(tag, data):
        return tag + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")

    def lst(kind, data):
        return b"LIST" + struct.pack("<I", len(data) + 4) + kind + data

    pad = b"\x00" * (row - w * 3)
    movi = b"".join(chunk(b"00db", b"".join(img[y, :, ::-1].tobytes() + pad for y in range(h - 1, -1, -1)))
                    for img in imgs)
    hdrl = lst(b"hdrl", chunk(b"avih", avih) + lst(b"strl", chunk(b"strh", strh) + chunk(b"strf", bmp)))
    body = b"AVI " + hdrl + lst(b"movi", movi)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def have_mp4():
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def write_mp4(frames, path, fps):
    try:
        import imageio_ffmpeg
    except ImportError:
        raise WanVAEError("writing .mp4 needs the video extra: pip install 'wanvideo-vae[video]' "
                          "(or write .avi, a PNG folder or .npy)") from None
    imgs = to_uint8(frames)
    n, h, w, _ = imgs.shape
    # yuv420p (what players expect) needs even sizes
    imgs = np.pad(imgs, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    writer = imageio_ffmpeg.write_frames(path, (imgs.shape[2], imgs.shape[1]), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", quality=8, macro_block_size=1)
    writer.send(None)
    for img in imgs:
        writer.send(np.ascontiguousarray(img))
    writer.close()


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
    with open(path, "wb") as f:
        f.write(png_bytes(sheet))


def check_output(out):
    """Fails early (before a decode) on an output the writers cannot produce."""
    out = os.fspath(out)
    ext = os.path.splitext(out)[1]
    if ext and ext not in (".mp4", ".avi", ".npy"):
        raise WanVAEError(f"{out}: unknown output format (use .mp4, .avi, .npy, or a folder name for PNGs)")
    if ext == ".mp4" and not have_mp4():
        raise WanVAEError("writing .mp4 needs the video extra: pip install 'wanvideo-vae[video]' "
                          "(or write .avi, a PNG folder or .npy)")
    if ext:  # a file: its folder must be there to write in (a PNG folder is made with its parents)
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            raise WanVAEError(f"{out}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise WanVAEError(f"{out}: the folder {folder} is not writable")


def write_frames(frames, out, fps):
    """By the output's name: .mp4, .avi, .npy (float32 [F, H, W, 3] as decoded), else a PNG folder."""
    out = os.fspath(out)
    check_output(out)
    if out.endswith(".mp4"):
        write_mp4(frames, out, fps)
    elif out.endswith(".avi"):
        write_avi(frames, out, fps)
    elif out.endswith(".npy"):
        np.save(out, frames.astype(np.float32))
    else:
        write_png_dir(frames, out)
