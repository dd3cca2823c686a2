"""The one TorchScript exporter of every family (mmseg segmentors, MRN): the kernel then needs only torch.

export_torchscript(module, example, folder, config) traces a CPU copy of the module, writes folder/model.ts, the
torch version it was traced with (model.ts.torch_version, checked by the kernel notebook) and config.json
(framework "torchscript"), and checks the saved trace against the eager module at another batch size.
An mmseg segmentor is wrapped in SegmentorLogits first: normalised float NCHW at the tile size in, len(CLASSES)
logits (multiclass) or one FTU logit (2-class models) at the input resolution out. Re-export a trained mmseg run folder with
`python -m train.export --run-dir outputs/<config-stem>/fold<k>`: its mmseg_config.py is read as data (literals and
dict(...), as mmengine dumps it), never executed, and files that resolve outside the folder are refused.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import re
import warnings
from pathlib import Path
from typing import Any

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
    check_batch: int | None = None,
    tolerance: float = TOLERANCE,
) -> Path:
    """Trace a CPU float copy of `module` on `example`, write model.ts + its torch version + config.json to folder.

    The saved file is reloaded and compared with the eager copy on a seeded batch of `check_batch` (inference
    batches windows, so the trace must not bake in the example's batch size); a difference above `tolerance`
    is an error. check_batch defaults to another batch size than the example's: 2 for an example of 1, else 1
    (a batch-2 example checked at 1 costs 4 forward passes, a batch-1 example checked at 2 costs 5).
    The module itself is left where it was (device, mode). Returns the folder.
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
    if check_batch is None:
        check_batch = 2 if example.shape[0] == 1 else 1
    if check_batch == example.shape[0]:
        raise ValueError(f"check_batch {check_batch} is the example's batch size: the check must use another")
    shape = (check_batch, *example.shape[1:])
    check = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    diff = max_abs_difference(eager, loaded, check)
    if diff > tolerance:
        raise RuntimeError(f"TorchScript export {path} differs from the eager model by {diff:.2e} (> {tolerance:g})")
    dataclasses.replace(config, framework="torchscript", weights=WEIGHTS).save(folder)
    return folder


def export_segmentor(segmentor: nn.Module, folder: str | Path, config: CheckpointConfig) -> Path:
    """export_torchscript of an mmseg segmentor (as SegmentorLogits) at the config's tile size, traced on a batch of
    2 and checked at batch 1 (the cheaper order for the large recipes: SegFormer-b3 at 1024 px is 11 CPU s a pass)."""
    example = torch.randn(2, 3, config.tile_size, config.tile_size)
    return export_torchscript(SegmentorLogits(segmentor), example, folder, config)


class UntrustedRunFolder(ValueError):
    """A run folder's files leave the folder or its mmseg config is more than plain data."""


def _inside(run_dir: Path, name: str) -> Path:
    """run_dir/name, refused when it is missing or resolves outside run_dir (a symlink out, a '..')."""
    path = run_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a folder written by `python -m train.mmseg_train`?")
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise UntrustedRunFolder(f"{path} resolves to {path.resolve()}, outside the run folder {run_dir}: refused "
                                 "(copy the file into the folder if you trust it)")
    return path


def _plain_data(node: ast.expr, path: Path) -> Any:
    """The value of a literal expression or a dict(...) call of them; UntrustedRunFolder for anything else."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and \
            isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.List):
        return [_plain_data(e, path) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_plain_data(e, path) for e in node.elts)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_plain_data(k, path): _plain_data(v, path) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args \
            and all(k.arg is not None for k in node.keywords):
        return {k.arg: _plain_data(k.value, path) for k in node.keywords}
    raise UntrustedRunFolder(f"{path}, line {node.lineno}: {ast.unparse(node)[:80]!r} is not plain data (literals and "
                             "dict(...) only, as mmengine's Config.dump writes them): refused, nothing executed")


# mmengine builds `type` by registry name and, failing that, imports whatever dotted path it names and calls it
# (get_object_from_string): a data-only config could still name `os.system`. Registered OpenMMLab types are class
# names, optionally scoped by the two packages our configs use.
_TYPE = re.compile(r"(?:mmseg\.|mmpretrain\.)?[A-Z][A-Za-z0-9_]*")


_IMPORTS = ("mmseg", "mmpretrain", "train.mmseg_ext")  # custom_imports a config of ours may name


def _check_imports(settings: dict, path: Path) -> None:
    """Refuse custom_imports outside the packages our mmseg configs register modules from."""
    names = (settings.get("custom_imports") or {}).get("imports", [])
    names = [names] if isinstance(names, str) else names
    bad = [n for n in names if not (isinstance(n, str) and any(n == p or n.startswith(p + ".") for p in _IMPORTS))]
    if bad:
        raise UntrustedRunFolder(f"{path}: custom_imports {bad} outside {list(_IMPORTS)}: refused, nothing imported")


def _check_types(value: Any, path: Path) -> None:
    """Refuse a `type` that is not a (scoped) class name anywhere in a config's settings."""
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is not None and not (isinstance(kind, str) and _TYPE.fullmatch(kind)):
            raise UntrustedRunFolder(f"{path}: type={kind!r} is not a registered class name (mmengine would import "
                                     "and call whatever it names): refused, nothing executed")
        for item in value.values():
            _check_types(item, path)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_types(item, path)


def read_dumped_config(path: str | Path) -> dict:
    """The settings of an mmseg config that mmengine's Config.dump wrote, read as data: never executed.

    Only `name = <literal or dict(...)>` statements are accepted; an import, a call, an attribute or a name
    anywhere is refused (UntrustedRunFolder), and so are a `type` that is not a class name (mmengine would import
    and call a dotted path such as `os.system`) and custom_imports outside _IMPORTS, so a run folder from elsewhere
    cannot run code on this machine.
    """
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise UntrustedRunFolder(f"{path} is not valid Python ({exc.msg}, line {exc.lineno})") from exc
    settings: dict[str, Any] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise UntrustedRunFolder(f"{path}, line {stmt.lineno}: {ast.unparse(stmt)[:80]!r} is not a plain "
                                     "assignment: refused, nothing executed")
        settings[stmt.targets[0].id] = _plain_data(stmt.value, path)
    _check_types(settings, path)
    _check_imports(settings, path)
    return settings


def export_run(run_dir: str | Path) -> Path:
    """Re-export model.ts of a trained mmseg run folder from its mmseg_config.py, best.pth and config.json.

    The three files must resolve inside the folder; mmseg_config.py is read as data (read_dumped_config), never
    executed, and best.pth is loaded weights-only (mmengine's default loader, no trusted scheme registered here).
    """
    run_dir = Path(run_dir)
    config_path, checkpoint, _ = (_inside(run_dir, n) for n in ("mmseg_config.py", "best.pth", "config.json"))
    settings = read_dumped_config(config_path)  # refused here, before mmengine or mmseg is even imported

    from mmengine.config import Config
    from mmengine.utils import import_modules_from_strings

    from train.mmseg_ext.checkpoint import load_segmentor

    if settings.get("custom_imports"):  # checked by read_dumped_config: our packages only
        import_modules_from_strings(**settings["custom_imports"])
    segmentor, _ = load_segmentor(Config(settings, filename=str(config_path)), checkpoint)
    config = CheckpointConfig.load(run_dir)
    if (config.train or {}).get("smoke"):  # the trainers' --max-steps
        print(f"warning: {run_dir} is a smoke run (--max-steps), not a trained model: kernels.build refuses it")
    return export_segmentor(segmentor, run_dir, config) / WEIGHTS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.export", description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="checkpoint folder outputs/<config-stem>/fold<k>")
    args = parser.parse_args(argv)
    try:
        path = export_run(args.run_dir)
    except (FileNotFoundError, UntrustedRunFolder) as exc:
        parser.error(str(exc))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
