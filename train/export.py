"""Export an mmseg segmentor to TorchScript, so the Kaggle kernel needs only torch (no mmcv build).

The exported module takes images normalised as ((rgb / 255) - mean) / std, float NCHW at the tile size, and returns
len(CLASSES) logits at the input resolution. Re-export a trained run folder with
`python -m train.export --run-dir outputs/<config-stem>/fold<k>`.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TOLERANCE = 1e-4


class SegmentorLogits(nn.Module):
    """An mmseg EncoderDecoder as a plain module: normalised float NCHW in, class logits at input resolution out."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        # only what inference runs: the auxiliary head and the data preprocessor stay out of the artifact
        self.backbone = segmentor.backbone
        self.neck = segmentor.neck if getattr(segmentor, "with_neck", False) else None
        self.decode_head = segmentor.decode_head
        self.align_corners = bool(segmentor.decode_head.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        logits = self.decode_head(feats)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


def max_abs_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between two models' outputs on one input."""
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def export_torchscript(segmentor: nn.Module, tile_size: int, path: str | Path, batch_size: int = 2) -> Path:
    """Trace a CPU copy of the segmentor at tile_size, save it to path, and check it matches eager within 1e-4."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eager = SegmentorLogits(copy.deepcopy(segmentor).cpu().float()).eval()
    example = torch.randn(1, 3, tile_size, tile_size)
    with torch.no_grad():
        traced = torch.jit.trace(eager, example, check_trace=False)
    torch.jit.save(traced, str(path))
    path.with_name(path.name + ".torch_version").write_text(torch.__version__)  # checked by the kernel notebook
    loaded = torch.jit.load(str(path), map_location="cpu")
    # a different batch size than the trace: inference batches tiles
    check = torch.randn(batch_size, 3, tile_size, tile_size, generator=torch.Generator().manual_seed(0))
    diff = max_abs_difference(eager, loaded, check)
    if diff > TOLERANCE:
        raise RuntimeError(f"TorchScript export {path} differs from the eager model by {diff:.2e} (> {TOLERANCE:g})")
    return path


def export_run(run_dir: str | Path) -> Path:
    """Re-export model.ts of a trained run folder from its mmseg_config.py and best.pth."""
    from train.mmseg_ext.checkpoint import load_segmentor

    run_dir = Path(run_dir)
    config_path, checkpoint = run_dir / "mmseg_config.py", run_dir / "best.pth"
    for p in (config_path, checkpoint):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: is {run_dir} a folder written by `python -m train.mmseg_upernet`?")
    segmentor, cfg = load_segmentor(config_path, checkpoint)
    return export_torchscript(segmentor, int(cfg.tile_size), run_dir / "model.ts")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="checkpoint folder outputs/<config-stem>/fold<k>")
    args = parser.parse_args(argv)
    print(f"wrote {export_run(args.run_dir)}")


if __name__ == "__main__":
    main()
