"""Where a 16-bit decode's error comes from, on the golden fixtures, without a GPU: the decoder in
float32 (PyTorch, CPU) with values rounded to bfloat16 at chosen places, against the fixture's
float32 output, on the [0, 1] image. Prints numbers; asserts nothing.

    python tools/bf16_error_sources.py [tiny small]

Rows: the weights alone rounded (activations float32); every tensor a bf16 backend keeps in memory
rounded (the unscaled latents, each convolution's output, each norm + SiLU, the attention's qkv and
output, each block's output), weights float32; both (a bf16 decoder); both but the blocks' outputs
(the residual stream) float32; and PyTorch's own decode in bfloat16. It shows why
tests/test_cuda.py bounds 16-bit decodes by PyTorch's own error where that exceeds 2e-2: on the
tiny fixture, rounding the float32 weights to bf16 alone errs more than 2e-2, and so does rounding
the stored activations alone.
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from helpers import load_fixture, to_unit  # noqa: E402
from wanvideo_vae.torch_reference import TorchWanDecoder  # noqa: E402


def bf16(x):
    return x.to(torch.bfloat16).float()


class RoundingDecoder(TorchWanDecoder):
    """The float32 decoder, rounding to bfloat16 the weights (round_weights), every tensor a 16-bit
    decoder stores but the blocks' outputs (acts), and the blocks' outputs: the residual stream
    (stream)."""

    def __init__(self, weights, mean, std, round_weights, acts, stream):
        super().__init__(weights, mean=mean, std=std)
        if round_weights:
            self.p = {k: bf16(v) for k, v in self.p.items()}
        self.acts, self.stream = acts, stream

    def _stored(self, x):
        return bf16(x) if self.acts else x

    def _block_out(self, x):
        return bf16(x) if self.stream else x


ROWS = [("weights bf16, activations fp32", (1, 0, 0)),
        ("weights fp32, activations bf16", (0, 1, 1)),
        ("both bf16 (a bf16 decoder)", (1, 1, 1)),
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
    for name in names:
        print(f"fixture {name}: vs its float32 output on the [0, 1] image")
        for label, f in error_rows(name):
            print(f"  {label:34s} max {f['max']:.4f}  p99.9 {f['p999']:.4f}  PSNR {f['psnr']:5.1f} dB")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny", "small"])
