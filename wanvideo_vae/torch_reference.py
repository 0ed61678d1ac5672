"""The PyTorch baselines the benchmark compares against (needs torch; imported only by `bench`).

- `TorchWanDecoder.decode`: the Wan 2.1 decoder as the public implementation runs it, one latent
  frame at a time with the last two input frames of every causal conv cached.
- `TorchWanDecoder.decode_blended`: the blended spatial tiling ComfyUI-WanVideoWrapper uses when
  WanVideoDecode has tiling on: latent tiles of (tile_x // 8, tile_y // 8) every (stride_x // 8,
  stride_y // 8), each decoded on its own (attention included), feathered by linear ramps as wide
  as the overlap and averaged. Its output is not the model's output; the benchmark measures by how
  much.
"""
import torch
import torch.nn.functional as F

from .api import WAN21_MEAN, WAN21_STD

DIM_MULT = [1, 2, 4, 4]
TEMPORAL_UPSAMPLE = [True, True, False]


class _Stream:
    """Causal caches of one streamed decode: the last two input frames of each conv, by call order."""

    def __init__(self):
        self.caches = []
        self.index = 0

    def conv(self, x, w, b, add=None):
        """The causal conv of x (the cache in front), plus `add` (a residual block's shortcut)."""
        kt, kh = w.shape[2], w.shape[3]
        if kt == 1:
            y = F.conv3d(x, w, b, padding=(0, kh // 2, kh // 2))
            return y if add is None else y + add
        if self.index == len(self.caches):
            self.caches.append(torch.zeros_like(x[:, :, :1]).expand(-1, -1, kt - 1, -1, -1))
        window = torch.cat([self.caches[self.index], x], dim=2)
        self.caches[self.index] = window[:, :, -(kt - 1):].clone()
        self.index += 1
        y = F.conv3d(window, w, b, padding=(0, kh // 2, kh // 2))
        return y if add is None else y + add


class TorchWanDecoder:
    """weights: {checkpoint key: tensor or array}; dtype: the compute dtype (float32 on the CPU)."""

    def __init__(self, weights, device="cpu", dtype=torch.float32, mean=None, std=None):
        self.p = {k: torch.as_tensor(v).to(device=device, dtype=dtype) for k, v in weights.items()}
        z = self.p["decoder.conv1.weight"].shape[1]
        self.mean = torch.as_tensor(WAN21_MEAN if mean is None else mean, dtype=dtype, device=device).view(1, z, 1, 1, 1)
        self.std = torch.as_tensor(WAN21_STD if std is None else std, dtype=dtype, device=device).view(1, z, 1, 1, 1)
        self.device, self.dtype = device, dtype

    @staticmethod
    def _rms(x, gamma):
        return F.normalize(x, dim=1) * x.shape[1] ** 0.5 * gamma

    stream_type = _Stream  # how causal convolutions run (tools/bf16_error_sources.py: also by taps)

    # Where a decoder in 16-bit types stores a tensor (_stored) or a block's output (_block_out): as
    # it is here; tools/bf16_error_sources.py rounds there.
    def _stored(self, x):
        return x

    def _block_out(self, x):
        return x

    def _residual(self, s, x, pre):
        p = self.p
        h = self._stored(F.conv3d(x, p[pre + "shortcut.weight"], p[pre + "shortcut.bias"])) \
            if pre + "shortcut.weight" in p else x
        y = self._stored(F.silu(self._rms(x, p[pre + "residual.0.gamma"])))
        y = self._stored(s.conv(y, p[pre + "residual.2.weight"], p[pre + "residual.2.bias"]))
        y = self._stored(F.silu(self._rms(y, p[pre + "residual.3.gamma"])))
        return self._block_out(s.conv(y, p[pre + "residual.6.weight"], p[pre + "residual.6.bias"], add=h))

    def _attention(self, x, pre):
        p = self.p
        b, c, t, h, w = x.shape
        f = self._stored(self._rms(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), p[pre + "norm.gamma"]))
        qkv = self._stored(F.conv2d(f, p[pre + "to_qkv.weight"], p[pre + "to_qkv.bias"]))
        qkv = qkv.reshape(b * t, 3 * c, h * w).transpose(1, 2)
        a = self._stored(F.scaled_dot_product_attention(qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]))  # one head
        a = F.conv2d(a.transpose(1, 2).reshape(b * t, c, h, w), p[pre + "proj.weight"], p[pre + "proj.bias"])
        return self._block_out(x + a.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4))

    def _upsample(self, s, x, pre, temporal, first):
        b, c, t, h, w = x.shape
        if temporal and not first:
            y = self._stored(s.conv(x, self.p[pre + "time_conv.weight"], self.p[pre + "time_conv.bias"]))
            x = y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        elif temporal:
            s.index += 1  # latent frame 0 skips the time conv, its cache stays zero
            if s.index > len(s.caches):
                s.caches.append(torch.zeros_like(x[:, :, :1]).expand(-1, -1, 2, -1, -1))
        t = x.shape[2]
        frames = F.interpolate(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), scale_factor=2.0, mode="nearest")
        frames = F.conv2d(frames, self.p[pre + "resample.1.weight"], self.p[pre + "resample.1.bias"], padding=1)
        return self._block_out(frames.reshape(b, t, c // 2, 2 * h, 2 * w).permute(0, 2, 1, 3, 4))

    def _decoder_step(self, s, x, first):
        p = self.p
        x = self._block_out(s.conv(x, p["decoder.conv1.weight"], p["decoder.conv1.bias"]))
        x = self._residual(s, x, "decoder.middle.0.")
        x = self._attention(x, "decoder.middle.1.")
        x = self._residual(s, x, "decoder.middle.2.")
        i = 0
        for stage in range(len(DIM_MULT)):
            for _ in range(3):
                x = self._residual(s, x, f"decoder.upsamples.{i}.")
                i += 1
            if stage < len(DIM_MULT) - 1:
                x = self._upsample(s, x, f"decoder.upsamples.{i}.", TEMPORAL_UPSAMPLE[stage], first)
                i += 1
        x = self._stored(F.silu(self._rms(x, p["decoder.head.0.gamma"])))
        return self._stored(s.conv(x, p["decoder.head.2.weight"], p["decoder.head.2.bias"]))

    @torch.no_grad()
    def decode(self, z):
        """z [z_dim, T, h, w] (normalized) -> raw frames [3, F, 8h, 8w] on the decoder's device."""
        x = z[None].to(device=self.device, dtype=self.dtype) * self.std + self.mean
        x = self._stored(F.conv3d(self._stored(x), self.p["conv2.weight"], self.p["conv2.bias"]))
        s = self.stream_type()
        out = []
        for t in range(x.shape[2]):
            s.index = 0
            out.append(self._decoder_step(s, x[:, :, t:t + 1], first=t == 0))
        return torch.cat(out, dim=2)[0]

    @staticmethod
    def _ramp(n, at_start, at_end, width, device):
        m = torch.ones(n, device=device)
        ramp = (torch.arange(width, device=device) + 1) / width
        if not at_start:
            m[:width] = ramp[:n]
        if not at_end:
            m[-width:] = ramp.flip(0)[-min(width, n):]
        return m

    @torch.no_grad()
    def decode_blended(self, z, tile_x=272, tile_y=272, tile_stride_x=144, tile_stride_y=128):
        """WanVideoWrapper-style blended tiled decode of z [z_dim, T, h, w] -> [3, F, 8h, 8w] (clamped)."""
        _, T, H, W = z.shape
        size_h, size_w = tile_x // 8, tile_y // 8  # the wrapper passes (tile_x, tile_y) as (height, width)
        step_h, step_w = tile_stride_x // 8, tile_stride_y // 8
        frames = 1 + 4 * (T - 1)
        values = torch.zeros(3, frames, 8 * H, 8 * W, device=self.device, dtype=self.dtype)
        weight = torch.zeros(1, 1, 8 * H, 8 * W, device=self.device, dtype=self.dtype)
        for h in range(0, H, step_h):
            if h - step_h >= 0 and h - step_h + size_h >= H:
                continue
            for w in range(0, W, step_w):
                if w - step_w >= 0 and w - step_w + size_w >= W:
                    continue
                tile = self.decode(z[:, :, h:h + size_h, w:w + size_w])
                th, tw = tile.shape[2], tile.shape[3]
                mh = self._ramp(th, h == 0, h + size_h >= H, 8 * (size_h - step_h), self.device)
                mw = self._ramp(tw, w == 0, w + size_w >= W, 8 * (size_w - step_w), self.device)
                mask = torch.minimum(mh[:, None], mw[None, :]).to(self.dtype)
                values[:, :, 8 * h:8 * h + th, 8 * w:8 * w + tw] += tile * mask
                weight[..., 8 * h:8 * h + th, 8 * w:8 * w + tw] += mask
        return (values / weight).clamp_(-1, 1)
