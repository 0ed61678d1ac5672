"""A stand-in for ComfyUI-WanVideoWrapper's WANVAE: torch modules with the wrapper's attribute
layout (.model holding the checkpoint-named parameters, dtype, mean / inv_std or the older std /
scale), whose decode() is the independent PyTorch reference."""
import numpy as np
import torch

from reference_decoder import reference_decode


def module_tree(weights):
    """An nn.Module whose state_dict() keys are exactly the given checkpoint keys."""
    root = torch.nn.Module()
    for key, value in weights.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(torch.as_tensor(np.asarray(value)), requires_grad=False))
    return root


class StandInWanVAE(torch.nn.Module):
    def __init__(self, weights, mean, std, legacy=False):
        super().__init__()
        self.model = module_tree(weights)
        self.dtype = torch.float32
        mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        if legacy:  # older wrapper versions
            self.std = std
            self.scale = [mean, 1.0 / std]
            self.mean = mean
        else:  # plain tensors, as the wrapper sets them: not in state_dict(), not moved by .to()
            self.mean = mean
            self.inv_std = 1.0 / std
        self._mean, self._std = mean.flatten().numpy(), std.flatten().numpy()

    def decode(self, hidden_states, device=None, tiled=False, end_=False, tile_size=(34, 34), tile_stride=(18, 16),
               pbar=True, output_device=None, output_dtype=None):
        """The wrapper's return: tiled, float32 clamped to [-1, 1] on the CPU; untiled, the raw decode in
        the VAE's dtype on `device` (output_dtype on output_device when that is given, but for an end-frame
        decode: the wrapper's double_decode takes neither)."""
        weights = {k: v.detach().numpy() for k, v in self.model.state_dict().items()}
        out = []
        for z in hidden_states:
            raw = torch.from_numpy(reference_decode(weights, z.float().numpy(), self._mean, self._std,
                                                    end_frame=end_)).permute(3, 0, 1, 2)
            if tiled:
                out.append(raw.clamp(-1, 1))
            elif output_device is not None and not end_:
                out.append(raw.to(output_device, output_dtype or self.dtype))
            else:
                out.append(raw.to(device or "cpu", self.dtype))
        return out
