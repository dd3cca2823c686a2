"""The one TorchScript exporter of every family (mmseg segmentors, MRN): the kernel then needs only torch.

export_torchscript(module, example, folder, config) traces a CPU copy of the module, writes folder/model.ts, the
torch version it was traced with (model.ts.torch_version, checked by the kernel notebook) and config.json
(framework "torchscript"), and checks the saved trace against the eager module at another batch size.
An mmseg segmentor is wrapped in SegmentorLogits first: normalised float NCHW at the tile size in, len(CLASSES)
logits (multiclass) or one FTU logit (2-class models) at the input resolution out. Re-export a trained mmseg run folder with
`python -m train.export --run-dir outputs/<config-stem>/fold<k>`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inference.checkpoint import CheckpointConfig
from inference.cli import HelpFormatter
from inference.engine.models import TORCH_VERSION_SUFFIX

TOLERANCE = 1e-4
WEIGHTS = "model.ts"


class SegmentorLogits(nn.Module):
    """An mmseg EncoderDecoder as a plain module: normalised float NCHW in, class logits at input resolution out.

    A 2-class (background / FTU) segmentor gives ONE channel, the FTU logit minus the background logit: its sigmoid
    is the 2-class softmax's FTU probability, so the checkpoint is a binary one (config.json task "binary") and
    ensembles like the fastai UNets.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        # only what inference runs: the auxiliary head and the data preprocessor stay out of the artifact
        self.backbone = segmentor.backbone
        self.neck = segmentor.neck if getattr(segmentor, "with_neck", False) else None
        self.decode_head = segmentor.decode_head
        self.align_corners = bool(segmentor.decode_head.align_corners)
        self.binary = int(segmentor.decode_head.num_classes) == 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        logits = self.decode_head(feats)
        if self.binary:
            logits = logits[:, 1:2] - logits[:, 0:1]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


def max_abs_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between two models' outputs on one input."""
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def export_torchscript(
    module: nn.Module,
    example: torch.Tensor,
    folder: str | Path,
    config: CheckpointConfig,
    check_batch: int = 2,
    tolerance: float = TOLERANCE,
) -> Path:
    """Trace a CPU float copy of `module` on `example`, write model.ts + its torch version + config.json to folder.

    The saved file is reloaded and compared with the eager copy on a seeded batch of `check_batch` (inference
    batches windows, so the trace must not bake in the example's batch size); a difference above `tolerance`
    is an error. The module itself is left where it was (device, mode). Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    eager = copy.deepcopy(module).cpu().float().eval()
    path = folder / WEIGHTS
    with torch.no_grad(), warnings.catch_warnings():  # torch marks jit deprecated; the checkpoint contract uses it
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(eager, example.cpu().float(), check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    path.with_name(path.name + TORCH_VERSION_SUFFIX).write_text(torch.__version__)
    shape = (check_batch, *example.shape[1:])
    check = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    diff = max_abs_difference(eager, loaded, check)
    if diff > tolerance:
        raise RuntimeError(f"TorchScript export {path} differs from the eager model by {diff:.2e} (> {tolerance:g})")
    dataclasses.replace(config, framework="torchscript", weights=WEIGHTS).save(folder)
    return folder


def export_segmentor(segmentor: nn.Module, folder: str | Path, config: CheckpointConfig) -> Path:
    """export_torchscript of an mmseg segmentor (as SegmentorLogits) at the config's tile size."""
    example = torch.randn(1, 3, config.tile_size, config.tile_size)
    return export_torchscript(SegmentorLogits(segmentor), example, folder, config)


def export_run(run_dir: str | Path) -> Path:
    """Re-export model.ts of a trained mmseg run folder from its mmseg_config.py, best.pth and config.json."""
    from train.mmseg_ext.checkpoint import load_segmentor

    run_dir = Path(run_dir)
    config_path, checkpoint = run_dir / "mmseg_config.py", run_dir / "best.pth"
    for p in (config_path, checkpoint, run_dir / "config.json"):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: is {run_dir} a folder written by `python -m train.mmseg_train`?")
    segmentor, _ = load_segmentor(config_path, checkpoint)
    return export_segmentor(segmentor, run_dir, CheckpointConfig.load(run_dir)) / WEIGHTS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.export", description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="checkpoint folder outputs/<config-stem>/fold<k>")
    args = parser.parse_args(argv)
    try:
        path = export_run(args.run_dir)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
