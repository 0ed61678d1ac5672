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
        else:
            self.register_buffer("mean", mean)
            self.register_buffer("inv_std", 1.0 / std)
        self._mean, self._std = mean.flatten().numpy(), std.flatten().numpy()

    def decode(self, hidden_states, device=None, tiled=False, end_=False, tile_size=(34, 34), tile_stride=(18, 16),
               pbar=True):
        weights = {k: v.detach().numpy() for k, v in self.model.state_dict().items()}
        out = []
        for z in hidden_states:
            raw = reference_decode(weights, z.float().numpy(), self._mean, self._std, end_frame=end_)
            out.append(torch.from_numpy(raw).permute(3, 0, 1, 2).clamp(-1, 1))
        return out
