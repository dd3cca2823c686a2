"""mmseg's AugmentPreset: every DataLoader worker and epoch draws its own augmentations, flips independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch.utils.data

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")

from train.mmseg_ext.transforms import AugmentPreset  # noqa: E402

pytestmark = pytest.mark.mmseg

ASYMMETRIC = np.arange(64, dtype=np.uint8).reshape(8, 8)[..., None].repeat(3, -1)


class _PresetTiles(torch.utils.data.Dataset):
    """One tile through an AugmentPreset built in the parent process, as mmseg's pipeline does."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.step = AugmentPreset("flips")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        results = self.step.transform({"img": ASYMMETRIC.copy(), "gt_seg_map": ASYMMETRIC[..., 0].copy()})
        return results["img"]


def _mirrored(out: np.ndarray) -> bool:
    return any(np.array_equal(out, np.rot90(ASYMMETRIC[:, ::-1], k)) for k in range(4))


def test_workers_and_epochs_draw_independently_and_flips_do_not_fire_together() -> None:
    # mmengine's worker_init_fn seeds torch with seed + worker id, the same every epoch; the preset must follow the
    # DataLoader's own per-epoch worker seed. The old reseed (Compose.set_random_seed) also gave every transform
    # the same stream, so no tile was ever mirrored.
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(_PresetTiles(1000), batch_size=None, num_workers=2)
    epochs = [[t.numpy() for t in loader] for _ in range(2)]
    for tiles in epochs:
        worker0, worker1 = tiles[0::2], tiles[1::2]  # the sequential sampler deals indices to workers in turn
        assert any(not np.array_equal(a, b) for a, b in zip(worker0[:20], worker1[:20], strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(epochs[0][:20], epochs[1][:20], strict=True))
    mirrored = np.mean([_mirrored(t) for t in epochs[0] + epochs[1]])
    assert 0.45 < mirrored < 0.55
