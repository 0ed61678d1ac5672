"""A small decode for a leak checker: python tools/leak_probe.py under valgrind (see
tests/test_native_checks.py). Builds a decoder, decodes tiled and untiled (float32 frames, and bytes,
tiled with an end frame), hits the error paths (bad latents, an injected allocation failure, an
interrupt), then exits."""
import numpy as np

import wanvideo_vae as wv
from wanvideo_vae.random_model import random_latents, random_weights

dec = wv.Decoder(random_weights(8, 4, seed=1), mean=[0.0] * 4, std=[1.0] * 4)
lat = random_latents(4, 2, 3, 4)
two_tiles = dict(tile_x=40, tile_y=40, tile_stride_x=32, tile_stride_y=32)
dec.decode(lat)
dec.decode(lat, **two_tiles)
dec.decode(lat, dtype=np.uint8)
dec.decode(lat, **two_tiles, dtype=np.uint8, end_frame=True)
for bad in (np.zeros((5, 2, 3, 4), np.float32), np.full((4, 1, 2, 2), np.nan, np.float32)):
    try:
        dec.decode(bad)
    except wv.WanVAEError:
        pass
wv._C._fail_nth_alloc(1)
try:
    dec.decode(lat)
except MemoryError:
    pass
try:
    dec.decode(lat, progress=lambda done, total: False)
except wv.DecodeInterrupted:
    pass
print("leak probe done")
