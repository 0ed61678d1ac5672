"""Where a 16-bit decode's error comes from, on the golden fixtures, without a GPU: the decoder in
float32 (PyTorch, CPU) with values rounded to bfloat16 at chosen places, against the fixture's
float32 output, on the [0, 1] image. Prints numbers; asserts nothing.

    python tools/bf16_error_sources.py [tiny small]

Rows: the weights alone rounded (activations float32); every tensor a bf16 backend keeps in memory
rounded (the unscaled latents, each convolution's output, each norm + SiLU, the attention's qkv and
output, each block's output), weights float32; both (a bf16 decoder); both, with the causal
convolutions (equal widths of at most 128 channels) summed tap by tap, the sum rounded after each
tap, as the CUDA backend runs them (three 2-d convolutions accumulating into a bf16 output that
holds the residual block's shortcut first); both but the blocks' outputs (the residual stream)
float32; and PyTorch's own decode in bfloat16. It shows why
tests/test_cuda.py bounds 16-bit decodes by PyTorch's own error where that exceeds 2e-2: on the
tiny fixture, rounding the float32 weights to bf16 alone errs more than 2e-2, and so does rounding
the stored activations alone.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from helpers import load_fixture, to_unit  # noqa: E402
from wanvideo_vae.torch_reference import TorchWanDecoder, _Stream  # noqa: E402

TAPS_MAX_CHANNELS = 128  # the CUDA backend's default (WANVIDEO_CUDA_TAPS_MAX_CHANNELS)


def bf16(x):
    return x.to(torch.bfloat16).float()


class TapsStream(_Stream):
    """Causal convolutions as the CUDA backend runs its equal-width ones (by taps): one 2-d convolution per temporal
    tap, the bias with the first, each added to the bf16 output (rounded after every tap), which
    holds the shortcut first where the conv ends a residual block."""

    def conv(self, x, w, b, add=None):
        kt, kh = w.shape[2], w.shape[3]
        if kt == 1 or w.shape[0] != w.shape[1] or w.shape[0] > TAPS_MAX_CHANNELS:
            return super().conv(x, w, b, add)
        if self.index == len(self.caches):
            self.caches.append(torch.zeros_like(x[:, :, :1]).expand(-1, -1, kt - 1, -1, -1))
        window = torch.cat([self.caches[self.index], x], dim=2)
        self.caches[self.index] = window[:, :, -(kt - 1):].clone()
        self.index += 1
        frames = []
        for t in range(x.shape[2]):
            y = None if add is None else add[:, :, t]
            for dt in range(kt):
                tap = F.conv2d(window[:, :, t + dt], w[:, :, dt], b if dt == 0 else None, padding=kh // 2)
                y = bf16(tap if y is None else y + tap)
            frames.append(y)
        return torch.stack(frames, dim=2)


class RoundingDecoder(TorchWanDecoder):
    """The float32 decoder, rounding to bfloat16 the weights (round_weights), every tensor a 16-bit
    decoder stores but the blocks' outputs (acts), and the blocks' outputs: the residual stream
    (stream)."""

    def __init__(self, weights, mean, std, round_weights, acts, stream, by_taps=False):
        super().__init__(weights, mean=mean, std=std)
        if round_weights:
            self.p = {k: bf16(v) for k, v in self.p.items()}
        self.acts, self.stream = acts, stream
        self.stream_type = TapsStream if by_taps else _Stream

    def _stored(self, x):
        return bf16(x) if self.acts else x

    def _block_out(self, x):
        return bf16(x) if self.stream else x


ROWS = [("weights bf16, activations fp32", (1, 0, 0)),
        ("weights fp32, activations bf16", (0, 1, 1)),
        ("both bf16 (a bf16 decoder)", (1, 1, 1)),
        ("both bf16, convs by taps", (1, 1, 1, True)),
        ("both bf16, residual stream fp32", (1, 1, 0))]


def figures(got, want):
    err = np.abs(got - want).astype(np.float64)
    return dict(max=err.max(), p999=np.quantile(err, 0.999), psnr=10 * np.log10(1 / np.mean(err ** 2)))


TORCH_ROW = "PyTorch in bf16 (CPU)"


def error_rows(name, labels=None):
    """[(label, {max, p999, psnr})] of fixture `name`: each rounding of ROWS, then PyTorch in bf16
    (those named in labels, if given)."""
    weights, d = load_fixture(name)
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    lat = torch.from_numpy(d["latents"])
    want = to_unit(d["expected_raw"])
    wanted = lambda label: labels is None or label in labels  # noqa: E731
    rows = [(label, figures(to_unit(RoundingDecoder(w, d["mean"], d["std"], *cfg).decode(lat).numpy()), want))
            for label, cfg in ROWS if wanted(label)]
    if wanted(TORCH_ROW):
        torch_bf16 = TorchWanDecoder(w, dtype=torch.bfloat16, mean=d["mean"], std=d["std"])
        rows.append((TORCH_ROW, figures(to_unit(torch_bf16.decode(lat).float().numpy()), want)))
    return rows


def main(names):
    print(f"PyTorch {torch.__version__}, threads: {torch.get_num_threads()} (the maxima move by up to 0.005 with "
          "the thread count: a sum taken in another order can round to the other bf16 neighbour)")
    for name in names:
        print(f"fixture {name}: vs its float32 output on the [0, 1] image")
        for label, f in error_rows(name):
            print(f"  {label:34s} max {f['max']:.4f}  p99.9 {f['p999']:.4f}  PSNR {f['psnr']:5.1f} dB")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny", "small"])
