"""Gradient checkpointing (train.models.checkpointing): same gradients, same files, far fewer saved activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.configs.fastai.base import FastaiConfig
from train.models import build_model, enable_gradient_checkpointing
from train.models.checkpointing import is_checkpointed


def saved_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes of the tensors autograd keeps for the backward pass of one forward, and the output."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
    return total, out


def gradients(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(x).square().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("arch", "encoder", "block_type"),
    [("Unet", "mit_b0", "Block"), ("UnetPlusPlus", "tu-efficientnet_b0", "InvertedResidual")],
)
def test_checkpointing_keeps_gradients_and_files_and_saves_memory(arch, encoder, block_type):
    """The two 1024 px recipes' model families (smp's MiT UNet, a timm EfficientNet UNet++): identical gradients and
    state_dict keys, every encoder block checkpointed, and under a third of the activations kept."""
    torch.manual_seed(0)
    cfg = FastaiConfig(arch=arch, encoder=encoder, encoder_weights=None, decoder_norm="groupnorm", tile_size=128)
    plain = build_model(cfg, weights=False)
    checkpointed = build_model(cfg, weights=False)
    checkpointed.load_state_dict(plain.state_dict())
    keys = list(checkpointed.state_dict())
    n = enable_gradient_checkpointing(checkpointed)
    assert n == enable_gradient_checkpointing(checkpointed)  # idempotent
    assert list(checkpointed.state_dict()) == keys
    blocks = [m for m in checkpointed.encoder.modules() if type(m).__name__ == block_type]
    assert blocks and all(is_checkpointed(m) for m in blocks)
    assert any(is_checkpointed(m) for m in checkpointed.decoder.modules())

    x = torch.rand(2, 3, 128, 128)
    plain.eval(), checkpointed.eval()  # eval runs the blocks plainly
    with torch.no_grad():
        torch.testing.assert_close(checkpointed(x), plain(x))

    plain.train(), checkpointed.train()
    torch.manual_seed(1)  # MiT's drop-path draws: the same in both
    kept_plain, out_plain = saved_bytes(plain, x)
    torch.manual_seed(1)
    kept_ckpt, out_ckpt = saved_bytes(checkpointed, x)
    torch.testing.assert_close(out_ckpt, out_plain)
    assert kept_ckpt < kept_plain / 3, (kept_ckpt, kept_plain)

    torch.manual_seed(2)
    g_plain = gradients(plain, x)
    torch.manual_seed(2)
    g_ckpt = gradients(checkpointed, x)  # the recomputation replays the forward's random draws
    assert g_plain.keys() == g_ckpt.keys()
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_checkpointing_refuses_a_network_without_blocks():
    with pytest.raises(ValueError, match="no blocks found"):
        enable_gradient_checkpointing(nn.Conv2d(3, 1, 3))


def test_checkpointed_model_exports_like_the_plain_one():
    """TorchScript tracing (train.export) sees the plain forward: eval mode, no recomputation in the graph."""
    cfg = FastaiConfig(encoder="tu-resnet18", encoder_weights=None, tile_size=64)
    model = build_model(cfg, weights=False)
    enable_gradient_checkpointing(model)
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    traced = torch.jit.trace(model, x, check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
