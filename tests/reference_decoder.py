"""An independent PyTorch reference of the Wan 2.1 decoder, written from DESIGN.md section 2.

It decodes the whole latent sequence at once (no streaming, no caches), so comparing it with the
native decoder also checks that streaming over time is exact."""
import torch
import torch.nn.functional as F

DIM_MULT = [1, 2, 4, 4]
TEMPORAL_UPSAMPLE = [True, True, False]


def causal_conv3d(x, w, b):
    """x [B, C, T, H, W]; zero padding (k-1)/2 in H, W; kt-1 zero frames before, none after."""
    kt, kh, kw = w.shape[2:]
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0))
    return F.conv3d(x, w, b)


def rms(x, gamma):
    """Per position over channels (dim 1): x / max(|x|, 1e-12) * sqrt(C) * gamma."""
    return F.normalize(x, dim=1, eps=1e-12) * x.shape[1] ** 0.5 * gamma


def residual_block(x, p, pre):
    h = causal_conv3d(x, p[pre + "shortcut.weight"], p[pre + "shortcut.bias"]) if pre + "shortcut.weight" in p else x
    y = F.silu(rms(x, p[pre + "residual.0.gamma"]))
    y = causal_conv3d(y, p[pre + "residual.2.weight"], p[pre + "residual.2.bias"])
    y = F.silu(rms(y, p[pre + "residual.3.gamma"]))
    y = causal_conv3d(y, p[pre + "residual.6.weight"], p[pre + "residual.6.bias"])
    return y + h


def attention_block(x, p, pre):
    B, C, T, H, W = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
    f = rms(frames, p[pre + "norm.gamma"])
    qkv = F.conv2d(f, p[pre + "to_qkv.weight"], p[pre + "to_qkv.bias"])  # [BT, 3C, H, W]
    tokens = qkv.reshape(B * T, 3 * C, H * W).transpose(1, 2)           # [BT, HW, 3C]
    q, k, v = tokens[..., :C], tokens[..., C:2 * C], tokens[..., 2 * C:]
    a = torch.softmax(q @ k.transpose(1, 2) / C ** 0.5, dim=-1) @ v     # [BT, HW, C]
    a = a.transpose(1, 2).reshape(B * T, C, H, W)
    out = F.conv2d(a, p[pre + "proj.weight"], p[pre + "proj.bias"])
    return x + out.reshape(B, T, C, H, W).permute(0, 2, 1, 3, 4)


def upsample_block(x, p, pre, temporal):
    B, C, T, H, W = x.shape
    if temporal and T > 1:
        first, rest = x[:, :, :1], x[:, :, 1:]
        y = causal_conv3d(rest, p[pre + "time_conv.weight"], p[pre + "time_conv.bias"])  # [B, 2C, T-1, H, W]
        y = y.reshape(B, 2, C, T - 1, H, W).permute(0, 2, 3, 1, 4, 5).reshape(B, C, 2 * (T - 1), H, W)
        x = torch.cat([first, y], dim=2)
    T2 = x.shape[2]
    frames = x.permute(0, 2, 1, 3, 4).reshape(B * T2, C, H, W)
    frames = F.interpolate(frames, scale_factor=2, mode="nearest")
    frames = F.conv2d(frames, p[pre + "resample.1.weight"], p[pre + "resample.1.bias"], padding=1)
    return frames.reshape(B, T2, C // 2, 2 * H, 2 * W).permute(0, 2, 1, 3, 4)


def decode_sequence(p, z, mean, std):
    """z [z_dim, T, h, w] normalized latents -> raw frames [3, F, 8h, 8w]."""
    x = z[None] * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
    x = causal_conv3d(x, p["conv2.weight"], p["conv2.bias"])
    x = causal_conv3d(x, p["decoder.conv1.weight"], p["decoder.conv1.bias"])
    x = residual_block(x, p, "decoder.middle.0.")
    x = attention_block(x, p, "decoder.middle.1.")
    x = residual_block(x, p, "decoder.middle.2.")
    i = 0
    for stage in range(len(DIM_MULT)):
        for _ in range(3):
            x = residual_block(x, p, f"decoder.upsamples.{i}.")
            i += 1
        if stage < len(DIM_MULT) - 1:
            x = upsample_block(x, p, f"decoder.upsamples.{i}.", TEMPORAL_UPSAMPLE[stage])
            i += 1
    x = F.silu(rms(x, p["decoder.head.0.gamma"]))
    x = causal_conv3d(x, p["decoder.head.2.weight"], p["decoder.head.2.bias"])
    return x[0]


@torch.no_grad()
def reference_decode(weights, latents, mean, std, end_frame=False):
    """weights {key: array}, latents [z, T, h, w] -> raw frames [F, H, W, 3] as float32 NumPy."""
    p = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in weights.items()}
    z = torch.as_tensor(latents, dtype=torch.float32)
    m = torch.as_tensor(mean, dtype=torch.float32)
    s = torch.as_tensor(std, dtype=torch.float32)
    if end_frame:
        parts = ([decode_sequence(p, z[:, :-1], m, s)] if z.shape[1] > 1 else []) + [decode_sequence(p, z[:, -1:], m, s)]
        out = torch.cat(parts, dim=1)
    else:
        out = decode_sequence(p, z, m, s)
    return out.permute(1, 2, 3, 0).contiguous().numpy()
