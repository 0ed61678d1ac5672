"""Where a 16-bit decode's error comes from, on the golden fixtures, without a GPU: the decoder in
float32 (PyTorch, CPU) with values rounded to bfloat16 at chosen places, against the fixture's
float32 output, on the [0, 1] image. Prints numbers; asserts nothing.

    python tools/bf16_error_sources.py [tiny small]

Rows: the weights alone rounded (activations float32); every stored activation rounded (each
convolution's output, each norm + SiLU, each residual sum: what a bf16 backend keeps in memory),
weights float32; both (a bf16 decoder); both but the residual stream float32; and PyTorch's own
decode in bfloat16. It shows why tests/test_cuda.py bounds 16-bit decodes by PyTorch's own error
where that exceeds 2e-2: rounding the fixtures' float32 weights to bf16 alone errs more than 2e-2.
A bf16 checkpoint's weights are exact in bf16, so its decodes lose only the activations' part.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from helpers import load_fixture, to_unit  # noqa: E402
from wanvideo_vae.torch_reference import TEMPORAL_UPSAMPLE, TorchWanDecoder  # noqa: E402


def bf16(x):
    return x.to(torch.bfloat16).float()


class RoundingDecoder(TorchWanDecoder):
    """The float32 decoder, rounding the weights (round_weights), every stored activation (acts) and
    the residual stream (stream: block outputs) to bfloat16 where asked."""

    def __init__(self, weights, mean, std, round_weights, acts, stream):
        super().__init__(weights, mean=mean, std=std)
        if round_weights:
            self.p = {k: bf16(v) for k, v in self.p.items()}
        self.acts, self.stream = acts, stream

    def _act(self, x):
        return bf16(x) if self.acts else x

    def _block_out(self, x):
        return bf16(x) if self.stream else x

    def _residual(self, s, x, pre):
        p = self.p
        h = self._act(F.conv3d(x, p[pre + "shortcut.weight"], p[pre + "shortcut.bias"])) \
            if pre + "shortcut.weight" in p else x
        y = self._act(F.silu(self._rms(x, p[pre + "residual.0.gamma"])))
        y = self._act(s.conv(y, p[pre + "residual.2.weight"], p[pre + "residual.2.bias"]))
        y = self._act(F.silu(self._rms(y, p[pre + "residual.3.gamma"])))
        return self._block_out(s.conv(y, p[pre + "residual.6.weight"], p[pre + "residual.6.bias"]) + h)

    def _attention(self, x, pre):
        return self._block_out(super()._attention(x, pre))

    def _upsample(self, s, x, pre, temporal, first):
        return self._block_out(super()._upsample(s, x, pre, temporal, first))

    def _decoder_step(self, s, x, first):
        p = self.p
        x = self._block_out(s.conv(x, p["decoder.conv1.weight"], p["decoder.conv1.bias"]))
        x = self._residual(s, x, "decoder.middle.0.")
        x = self._attention(x, "decoder.middle.1.")
        x = self._residual(s, x, "decoder.middle.2.")
        i = 0
        for stage in range(4):
            for _ in range(3):
                x = self._residual(s, x, f"decoder.upsamples.{i}.")
                i += 1
            if stage < 3:
                x = self._upsample(s, x, f"decoder.upsamples.{i}.", TEMPORAL_UPSAMPLE[stage], first)
                i += 1
        x = self._act(F.silu(self._rms(x, p["decoder.head.0.gamma"])))
        return s.conv(x, p["decoder.head.2.weight"], p["decoder.head.2.bias"])


ROWS = [("weights bf16, activations fp32", (1, 0, 0)),
        ("weights fp32, activations bf16", (0, 1, 1)),
        ("both bf16 (a bf16 decoder)", (1, 1, 1)),
        ("both bf16, residual stream fp32", (1, 1, 0))]


def figures(got, want):
    err = np.abs(got - want).astype(np.float64)
    return dict(max=err.max(), p999=np.quantile(err, 0.999), psnr=10 * np.log10(1 / np.mean(err ** 2)))


def error_rows(name):
    """[(label, {max, p999, psnr})] of fixture `name`: each rounding of ROWS, then PyTorch in bf16."""
    weights, d = load_fixture(name)
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    lat = torch.from_numpy(d["latents"])
    want = to_unit(d["expected_raw"])
    rows = [(label, figures(to_unit(RoundingDecoder(w, d["mean"], d["std"], *cfg).decode(lat).numpy()), want))
            for label, cfg in ROWS]
    torch_bf16 = TorchWanDecoder(w, dtype=torch.bfloat16, mean=d["mean"], std=d["std"])
    rows.append(("PyTorch in bf16 (CPU)", figures(to_unit(torch_bf16.decode(lat).float().numpy()), want)))
    return rows


def main(names):
    for name in names:
        print(f"fixture {name}: vs its float32 output on the [0, 1] image")
        for label, f in error_rows(name):
            print(f"  {label:34s} max {f['max']:.4f}  p99.9 {f['p999']:.4f}  PSNR {f['psnr']:5.1f} dB")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny", "small"])
