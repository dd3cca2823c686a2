"""Gradient (activation) checkpointing for the fastai trainer's networks: each block's activations are recomputed in
the backward pass instead of kept: far less memory for one more forward pass per step.

smp 0.6 has no switch of its own, and timm's `set_grad_checkpointing` reaches only timm encoders (not smp's MiT, not
the decoders), so the blocks are found by structure: every child of an nn.ModuleList / nn.Sequential / nn.ModuleDict
that holds parameters and is not itself such a container (MiT's `block1..4` entries, EfficientNet's MBConv blocks,
ResNet's bottlenecks, ConvNeXt's stages as timm's feature wrapper lists them, smp's UNet / UNet++ decoder blocks).
The module tree is left as it is (each block's `forward` is replaced on the instance), so state_dict keys, model.pth,
weight averaging and the TorchScript export do not change. Outside training (eval mode, no_grad) blocks run plainly.

A BatchNorm in train mode inside a block updates its running statistics twice per step (forward and recompute), as
with timm's own switch; the 1024 px recipes freeze their encoder BN and use a GroupNorm decoder.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def is_checkpointed(module: nn.Module) -> bool:
    """True for a block whose forward enable_gradient_checkpointing replaced."""
    forward = module.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward


def _blocks(module: nn.Module) -> list[nn.Module]:
    found = []
    for child in module.children():
        if isinstance(module, CONTAINERS) and not isinstance(child, CONTAINERS) and any(True for _ in child.parameters()):
            found.append(child)  # a block: checkpointed whole, not searched further
        else:
            found.extend(_blocks(child))
    return found


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint every block of `model` (see the module docstring); return how many. Idempotent.

    Raises ValueError when the network has no block this rule finds, rather than train without the saving.
    """
    blocks = _blocks(model)
    if not blocks:
        raise ValueError(
            f"grad_checkpointing: no blocks found in {type(model).__name__} (no parameterised children of a "
            "ModuleList / Sequential / ModuleDict); train without it or with a smaller tile_size / batch size"
        )
    for block in blocks:
        if not is_checkpointed(block):
            block.forward = types.MethodType(_checkpointed_forward, block)
    return len(blocks)
