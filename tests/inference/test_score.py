"""The Dice metric and the scorer on hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inference.metric import dice
from inference.rle import encode
from inference.score import main as score_main
from inference.score import score
from inference.tables import TableError, load_solution

REPO = Path(__file__).resolve().parents[2]
TEST_ROW = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n10078,spleen,Hubmap,2023,2023,0.4945,4\n"


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_dice_hand_computed() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1  # 4 pixels
    b[:2, :3] = 1  # 6 pixels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 10)
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.zeros((4, 5)))


def _solution() -> pd.DataFrame:
    m1 = np.zeros((4, 6), np.uint8)
    m1[1:3, 1:4] = 1  # 6 pixels
    m2 = np.zeros((5, 3), np.uint8)
    m2[0, :] = 1  # 3 pixels
    return pd.DataFrame({
        "id": [1, 2, 3], "organ": ["kidney", "kidney", "lung"], "data_source": ["HPA", "Hubmap", "Hubmap"],
        "img_height": [4, 5, 5], "img_width": [6, 3, 3], "rle": [encode(m1), encode(m2), encode(m2)],
    }), m1, m2


def test_score_hand_computed() -> None:
    sol, m1, m2 = _solution()
    half = m1.copy()
    half[1, 1:4] = 0  # 3 of 6 pixels predicted -> Dice 2*3/9
    sub = pd.DataFrame({"id": [1, 2], "rle": [encode(half), encode(m2)]})  # id 3 missing -> empty
    result = score(sub, sol)
    assert result["per_image"] == pytest.approx({1: 2 / 3, 2: 1.0, 3: 0.0})
    assert result["dice"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert result["per_organ"] == pytest.approx({"kidney": (2 / 3 + 1) / 2, "lung": 0.0})
    assert result["per_data_source"] == pytest.approx({"HPA": 2 / 3, "Hubmap": 0.5})
    assert result["missing"] == [3] and result["n"] == 3


def test_score_rejects_unknown_ids() -> None:
    sol, _, _ = _solution()
    with pytest.raises(TableError, match="not in the solution"):
        score(pd.DataFrame({"id": [99], "rle": [""]}), sol)


def test_score_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sol, m1, m2 = _solution()
    sol.to_csv(tmp_path / "sol.csv", index=False)
    pd.DataFrame({"id": [1, 2, 3], "rle": [encode(m1), encode(m2), ""]}).to_csv(tmp_path / "sub.csv", index=False)
    assert score_main(["--submission", str(tmp_path / "sub.csv"), "--solution", str(tmp_path / "sol.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dice"] == pytest.approx(2 / 3) and out["n"] == 3 and set(out["per_organ"]) == {"kidney", "lung"}
    assert load_solution(tmp_path / "sol.csv")["rle"].iloc[2] != ""


def test_score_cli_reports_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sol, _, _ = _solution()
    sol.to_csv(tmp_path / "sol.csv", index=False)
    (tmp_path / "sub.csv").write_text("id,rle\n1,\n1,\n")
    assert score_main(["--submission", str(tmp_path / "sub.csv"), "--solution", str(tmp_path / "sol.csv")]) == 2
    assert "duplicate id" in capsys.readouterr().err


