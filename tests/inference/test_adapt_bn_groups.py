"""AdaBN groups: one per (data_source, organ) by default, or one per data_source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from checkpoints import make_smp_checkpoint

from inference.engine.adapt_bn import adapt_batchnorm, drawn_rows, encoder_batchnorms, group_key
from inference.engine.ensemble import Member
from inference.engine.predictor import load_predictor


def test_group_keys_and_drawn_rows() -> None:
    table = pd.DataFrame({"id": [1, 2, 3, 4], "organ": ["kidney", "lung", "kidney", "kidney"],
                          "data_source": ["Hubmap", "Hubmap", "HPA", "Hubmap"]})
    row = next(table.itertuples())
    assert group_key(row) == "Hubmap/kidney" and group_key(row, "source") == "Hubmap"
    assert drawn_rows(table) == {"HPA/kidney": [2], "Hubmap/kidney": [0, 3], "Hubmap/lung": [1]}
    assert drawn_rows(table, grouping="source") == {"HPA": [2], "Hubmap": [0, 1, 3]}
    with pytest.raises(ValueError, match="grouping"):
        group_key(row, "organ")


def test_statistics_per_source_and_organ(demo_data: Path, tmp_path: Path) -> None:
    member = Member(load_predictor(make_smp_checkpoint(tmp_path / "unet" / "fold0", tile=64)))
    table = pd.read_csv(demo_data / "test.csv")
    adaptation = adapt_batchnorm(table, demo_data / "test_images", [member], windows=8, max_images=2)
    groups = {f"{r.data_source}/{r.organ}" for r in table.itertuples()}
    assert sorted(adaptation.states) == sorted(groups) and len(groups) > 2
    layer = encoder_batchnorms(member.predictor.model)[0][1]
    seen = []
    for key in sorted(groups):
        adaptation.use(key, [member])
        seen.append(layer.running_var.clone())
    assert all(not torch.equal(a, b) for i, a in enumerate(seen) for b in seen[i + 1:])  # each group its own
    rows = list(table.itertuples())
    assert adaptation.key(rows[0]) == f"{rows[0].data_source}/{rows[0].organ}"


def test_unseen_mode_adapts_only_sources_a_member_never_trained_on(demo_data: Path, tmp_path: Path) -> None:
    hpa = Member(load_predictor(make_smp_checkpoint(tmp_path / "hpa" / "fold0", tile=64, data_sources=["HPA"])))
    unknown = Member(load_predictor(make_smp_checkpoint(tmp_path / "old" / "fold0", tile=64, seed=1)))
    table = pd.read_csv(demo_data / "test.csv")
    adaptation = adapt_batchnorm(table, demo_data / "test_images", [hpa, unknown], windows=8, max_images=2,
                                 mode="unseen")
    groups = sorted({f"{r.data_source}/{r.organ}" for r in table.itertuples()})
    assert any(g.startswith("HPA/") for g in groups) and any(g.startswith("Hubmap/") for g in groups)
    for group in groups:  # the HPA-trained member adapts on Hubmap groups only; the unknown one nowhere
        adapted = set(adaptation.states[group])
        assert adapted == ({id(hpa)} if group.startswith("Hubmap/") else set())
    assert any("records no training data_sources" in n for n in adaptation.notes)
    everywhere = adapt_batchnorm(table, demo_data / "test_images", [hpa], windows=8, max_images=2, mode="all")
    assert all(set(everywhere.states[g]) == {id(hpa)} for g in groups)


def test_predict_adapts_unseen_sources_by_default_and_the_flag_chooses() -> None:
    from inference.predict import build_parser, options_from_args

    def parse(*flags: str) -> str:
        return options_from_args(build_parser().parse_args(["--data-dir", "d", "--models", "m", *flags])).adapt_bn

    assert parse() == "unseen" and parse("--adapt-bn") == "all" and parse("--adapt-bn", "off") == "off"
    with pytest.raises(SystemExit):
        parse("--adapt-bn", "sometimes")


def test_small_images_give_few_windows() -> None:
    from inference.engine.adapt_bn import distinct_windows

    assert distinct_windows((160, 160), 512, 64) == 4  # one padded window: a few draws, not 64 forwards
    assert distinct_windows((100, 40), 512, 1) == 2  # batch statistics need two
    assert distinct_windows((3000, 3000), 512, 64) == 64  # 36 tiles: as many as asked


def test_a_group_with_too_few_images_keeps_the_trained_statistics(demo_data: Path, tmp_path: Path) -> None:
    member = Member(load_predictor(make_smp_checkpoint(tmp_path / "hpa" / "fold0", tile=64, data_sources=["HPA"])))
    table = pd.read_csv(demo_data / "test.csv")
    sizes = table.groupby(["data_source", "organ"]).size()
    adaptation = adapt_batchnorm(table, demo_data / "test_images", [member], windows=8, max_images=2,
                                 mode="unseen", min_images=int(sizes.max()) + 1)
    assert all(state == {} for state in adaptation.states.values())
    assert any("fewer than --adapt-bn-min-images" in n for n in adaptation.notes)
