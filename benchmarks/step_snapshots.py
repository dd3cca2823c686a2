"""Train one fastai config and keep checkpoint folders at given optimizer steps, for Dice-against-steps curves.

    python benchmarks/step_snapshots.py --save-at 250,500,1000,1500 -- --config C --fold -1 --tiles T --out OUT ...

Everything after `--` goes to `python -m train.fastai_unet` unchanged. A fastai callback (registered through
fastai's own `defaults.callbacks`, as fastai registers its progress bar) writes the model's weights after the
optimizer steps listed in --save-at to OUT/<config-stem>/fold<k>/snapshots/step<N>/model.pth; when training ends,
the run's config.json is copied next to each, so every snapshot is a checkpoint folder inference.predict reads.
A snapshot is the one run seen part-way along its LR schedule, not a shorter run annealed to its end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.learner import defaults
from fastai.torch_core import get_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train import fastai_unet  # noqa: E402
from train.configs.fastai.base import load_config  # noqa: E402


class StepSnapshots(Callback):
    """After the listed optimizer steps, write the model's state_dict to <run>/snapshots/step<N>/model.pth."""

    order = 60  # after TrainEvalCallback (-10), which has counted the step in train_iter
    save_at: frozenset[int] = frozenset()  # set before the Learner is built (fastai builds default callbacks bare)

    def after_batch(self) -> None:
        if not self.training or self.learn.train_iter not in self.save_at:
            return
        folder = Path(self.learn.path) / "snapshots" / f"step{self.learn.train_iter}"
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in get_model(self.learn.model).state_dict().items()}
        torch.save(state, folder / "model.pth")


def finish_snapshots(run: Path) -> list[Path]:
    """Copy the finished run's config.json into each snapshot folder; return the snapshot folders by step."""
    folders = sorted((run / "snapshots").glob("step*"), key=lambda p: int(p.name[4:]))
    for folder in folders:
        shutil.copy2(run / "config.json", folder / "config.json")
    return folders


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(
        prog="python benchmarks/step_snapshots.py", description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--save-at", required=True, help="comma-separated optimizer steps to keep a checkpoint after")
    args = ap.parse_args(ours)
    try:
        steps = frozenset(int(s) for s in args.save_at.split(","))
    except ValueError:
        ap.error(f"--save-at must be comma-separated integers, got {args.save_at!r}")
    if not train_args:
        ap.error("give the train.fastai_unet arguments after `--`")
    StepSnapshots.save_at = steps
    defaults.callbacks.append(StepSnapshots)
    fastai_unet.main(train_args)
    known = argparse.ArgumentParser(add_help=False)
    for flag in ("--config", "--fold", "--out"):
        known.add_argument(flag)
    parsed, _ = known.parse_known_args(train_args)
    run = Path(parsed.out or "outputs") / load_config(parsed.config)[0] / f"fold{parsed.fold}"
    print(f"snapshots: {', '.join(p.name for p in finish_snapshots(run))} in {run / 'snapshots'}")


if __name__ == "__main__":
    main()
