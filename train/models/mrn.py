"""Multi-resolution network (MRN, Gu et al. 2018): a U-Net whose decoder also sees a wider, coarser context view.

Input: one (N, 6, S, S) tensor, channels 0-2 the tile at the fine um/px, channels 3-5 a context view centred on
the same point that covers `context` x the tile's field, resized to S x S (inference.tiling.context_view cuts it,
for the crop sampler, data_prep.wsi_tiles --context K and the sliding window alike). Two smp encoders (same name,
e.g. "tu-resnet18") encode the views; at every scale the context features' centre 1/context is cropped, resized to
the fine features' size and concatenated to the fine skip, and a U-Net decoder upsamples with bilinear
interpolation or transposed convolutions (the paper found transposed better). Exported to TorchScript
(train.export.export_torchscript), so the kernel needs only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLING = ("bilinear", "transpose")


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample by 2 (bilinear or transposed convolution), concatenate the skip, two 3x3 convolutions."""

    def __init__(self, cin: int, skip: int, cout: int, upsampling: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, 2, stride=2) if upsampling == "transpose" else None
        self.convs = nn.Sequential(_conv(cin + skip, cout), _conv(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x) if self.up is not None else F.interpolate(x, scale_factor=2.0, mode="bilinear",
                                                                   align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.convs(x)


class MRN(nn.Module):
    """Fine + context encoders, context-fused skips, a U-Net decoder; (N, 6, S, S) -> (N, classes, S, S) logits."""

    def __init__(
        self, encoder: str = "tu-resnet18", context: int = 2, upsampling: str = "transpose", classes: int = 1,
        encoder_weights: str | None = None, decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if context < 2:
            raise ValueError(f"MRN context must be at least 2 (the context view covers context x the tile), got {context}")
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling {upsampling!r} not in {UPSAMPLING}")
        self.context = context
        self.fine = smp.encoders.get_encoder(encoder, in_channels=3, depth=5, weights=encoder_weights)
        self.wide = smp.encoders.get_encoder(encoder, in_channels=3, depth=5, weights=encoder_weights)
        channels = list(self.fine.out_channels)  # (3, c1, ..., c5), strides 1, 2, ..., 32
        fused = [2 * c for c in channels]
        blocks, cin = [], fused[-1]
        for i, cout in enumerate(decoder_channels):
            skip = fused[-2 - i] if i < len(channels) - 2 else 0  # no skip at full resolution (the input itself)
            blocks.append(DecoderBlock(cin, skip, cout, upsampling))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, classes, 3, padding=1)

    def _centre(self, feature: torch.Tensor) -> torch.Tensor:
        """The context feature map's centre 1/context (the fine tile's field), resized to the full map."""
        h, w = feature.shape[-2:]
        ch, cw = max(1, h // self.context), max(1, w // self.context)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        centre = feature[..., y0 : y0 + ch, x0 : x0 + cw]
        return F.interpolate(centre, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x[:, :3])
        wide = self.wide(x[:, 3:6])
        skips = [torch.cat([f, self._centre(c)], 1) for f, c in zip(fine, wide, strict=True)]
        y = skips[-1]
        for i, block in enumerate(self.decoder):
            index = len(skips) - 2 - i
            y = block(y, skips[index] if index >= 1 else None)
        return self.head(y)
