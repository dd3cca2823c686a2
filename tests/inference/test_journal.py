"""Rows survive the process: the journal resumes a re-run, and the row a killed process was on becomes empty."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from checkpoints import ConstantNet, make_smp_checkpoint, make_torchscript_checkpoint
from crash import kill_on_open_env

from inference import predict
from inference.io import write_image
from inference.journal import read_records
from inference.submission import loop

REPO = Path(__file__).resolve().parents[2]
COLUMNS = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness"


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "test_images").mkdir(parents=True)
    rows = [f"{i},kidney,HPA,32,32,0.4,4" for i in range(1, 6)]
    (root / "test.csv").write_text(COLUMNS + "\n" + "\n".join(rows) + "\n")
    for i in range(1, 6):
        write_image(root / "test_images" / f"{i}.tiff", np.random.default_rng(i).integers(0, 256, (32, 32, 3),
                                                                                          dtype=np.uint8))
    return root


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_torchscript_checkpoint(tmp_path / "m" / "fold0", ConstantNet([3.0]), tile=32, task="binary")


def _argv(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--models", str(model), "--out", str(out), *extra]


def test_a_rerun_resumes_from_the_journal(data: Path, model: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s.csv"
    assert predict.main(_argv(data, model, out)) == 0
    first = out.read_bytes()
    header, records = read_records(out.with_name("s.csv.journal"))
    assert header and [r["row"] for r in records if r["event"] == "done"] == [0, 1, 2, 3, 4]
    capsys.readouterr()

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a journaled row was predicted again")

    monkeypatch.setattr(loop, "predict_row", never)  # what the loop calls (predict.predict_row is a re-export)
    assert predict.main(_argv(data, model, out)) == 0
    assert out.read_bytes() == first and "5 row(s) resumed" in capsys.readouterr().out
    monkeypatch.setattr(loop, "_resume", lambda book, rows: {})  # a broken resume: the patched row is reached
    with pytest.raises(AssertionError, match="predicted again"):
        predict.main(_argv(data, model, out))


def test_a_journal_another_run_holds_exits_2(data: Path, model: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """A second run on the same journal is refused (JournalLocked): exit 2 with its message, no traceback."""
    from inference.journal import Journal

    out = tmp_path / "s.csv"
    with Journal(out.with_name("s.csv.journal"), "another run"):
        assert predict.main(_argv(data, model, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: journal ") and "being written by another run" in err and "--journal" in err
    assert not out.exists()


@pytest.mark.slow
def test_the_supervisor_does_not_restart_a_child_refused_the_journal(data: Path, model: Path, tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture) -> None:
    """A real child refused the journal (JournalLocked, exit 2) is not restarted: a restart would be refused too."""
    from inference.journal import Journal

    journal = tmp_path / "run.journal"
    with Journal(journal, "another run"):
        status = predict.run_supervised(_argv(data, model, tmp_path / "s.csv"), journal, max_restarts=3)
    captured = capfd.readouterr()
    assert status == 2 and captured.out.count("prediction child pid") == 1, captured.out + captured.err[-2000:]
    assert "being written by another run" in captured.err and "Traceback" not in captured.err


def test_other_settings_start_over(data: Path, model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "s.csv"
    assert predict.main(_argv(data, model, out)) == 0
    with caplog.at_level(logging.WARNING):
        assert predict.main(_argv(data, model, out, "--threshold", "0.99")) == 0
    assert (pd.read_csv(out, dtype=str, keep_default_na=False)["rle"] == "").all()  # sigmoid(3) < 0.99
    assert (tmp_path / "s.csv.journal.stale").is_file()
    assert any("starting over" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_killed_run_resumes_and_the_row_in_progress_is_empty(data: Path, model: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    out, journal = tmp_path / "s.csv", tmp_path / "run.journal"
    env = kill_on_open_env(tmp_path / "hook", "test_images/3.tiff")
    cmd = [sys.executable, "-m", "inference.predict", *_argv(data, model, out, "--journal", str(journal))]
    killed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()
    _, records = read_records(journal)
    assert [(r["event"], r["row"]) for r in records] == [("claim", 0), ("done", 0), ("claim", 1), ("done", 1),
                                                         ("claim", 2)]
    with open(journal, "a") as f:
        f.write('{"event": "done", "row": 3, "id": "4", "rl')  # a record torn by the kill: ignored
    with caplog.at_level(logging.WARNING):
        assert predict.main(_argv(data, model, out, "--journal", str(journal))) == 0
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sub["id"].tolist() == ["1", "2", "3", "4", "5"]
    assert sub["rle"].tolist()[2] == "" and all(sub["rle"].tolist()[i] for i in (0, 1, 3, 4))
    assert any(r.getMessage().startswith("id 3: the previous run died") for r in caplog.records)
    done = {r["row"]: r for r in read_records(journal)[1] if r["event"] == "done"}
    assert done[2]["status"] == "crashed" and json.dumps(done[2])


@pytest.mark.slow
def test_a_run_killed_while_adabn_reads_an_image_blames_that_row(data: Path, model: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """--adapt-bn reads images before the loop, each under a claim: a decoder that kills it costs that row only."""
    model = make_smp_checkpoint(tmp_path / "bn" / "fold0", tile=32, logit=3.0)  # BatchNorm: AdaBN reads its images
    out, journal = tmp_path / "s.csv", tmp_path / "run.journal"
    argv = _argv(data, model, out, "--journal", str(journal), "--adapt-bn", "--adapt-bn-images", "5",
                 "--adapt-bn-min-images", "1", "--adapt-bn-groups", "source")  # one group: rows read in order
    env = kill_on_open_env(tmp_path / "hook", "test_images/3.tiff")
    killed = subprocess.run([sys.executable, "-m", "inference.predict", *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    _, records = read_records(journal)
    assert [(r["event"], r["row"]) for r in records] == [("claim", 0), ("release", 0), ("claim", 1), ("release", 1),
                                                         ("claim", 2)]
    with caplog.at_level(logging.WARNING):
        assert predict.main(argv) == 0
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sub["rle"].tolist()[2] == "" and all(sub["rle"].tolist()[i] for i in (0, 1, 3, 4))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("id 3: --adapt-bn: image skipped") for m in messages)
    assert any(m.startswith("id 3: the previous run died") for m in messages)
    done = {r["row"]: r["status"] for r in read_records(journal)[1] if r["event"] == "done"}
    assert done == {0: "ok", 1: "ok", 2: "crashed", 3: "ok", 4: "ok"}  # rows released by AdaBN are not blamed


@pytest.mark.parametrize("first_line", ["garbage that is not JSON", '{"journal": 99, "fingerprint": "x"}', "[1, 2]",
                                        '{"journal": 1, "finger'])
def test_a_damaged_or_foreign_journal_is_kept_under_a_new_name(tmp_path: Path, first_line: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from inference.journal import Journal

    path = tmp_path / "run.journal"
    content = first_line + '\n{"event": "done", "row": 0, "id": "1", "rle": "1 2"}\n'
    path.write_text(content)
    (tmp_path / "run.journal.damaged").write_text("an earlier one")
    with caplog.at_level(logging.WARNING), Journal(path, "fp") as book:
        assert book.done == {} and book.crashed == set()
    assert (tmp_path / "run.journal.damaged.1").read_text() == content  # never truncated, never over another
    assert (tmp_path / "run.journal.damaged").read_text() == "an earlier one"
    assert read_records(path)[0] == {"journal": 1, "fingerprint": "fp"}
    assert any("kept as run.journal.damaged.1" in r.getMessage() for r in caplog.records)


def test_a_journal_of_other_settings_is_set_aside_beside_earlier_ones(tmp_path: Path) -> None:
    from inference.journal import Journal

    path = tmp_path / "run.journal"
    for fingerprint in ("a", "b", "c"):
        with Journal(path, fingerprint) as book:
            book.finish(0, {"id": fingerprint, "rle": ""})
    assert read_records(tmp_path / "run.journal.stale")[0]["fingerprint"] == "a"
    assert read_records(tmp_path / "run.journal.stale.1")[0]["fingerprint"] == "b"


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    from inference.journal import Journal, JournalLocked

    path = tmp_path / "run.journal"
    book = Journal(path, "fp")
    book.finish(0, {"id": "1", "rle": "1 2"})
    with pytest.raises(JournalLocked, match="being written by another run"):
        Journal(path, "fp")
    other = subprocess.run(  # another process: the same refusal
        [sys.executable, "-c", f"from inference.journal import Journal; Journal({str(path)!r}, 'fp')"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "JournalLocked" in other.stderr and f"pid {os.getpid()}" in other.stderr
    assert [r["event"] for r in read_records(path)[1]] == ["done"]  # the refused writers changed nothing
    book.close()
    with Journal(path, "fp") as again:  # released: the next run resumes
        assert set(again.done) == {0}
