"""Faults in the middle of a run: signals to the process group, images that fail to decode, a full disk;
and the log without a terminal."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from singleshot.cli import main
from singleshot.errors import UserError
from singleshot.models import read_checkpoint
from tests.test_engine import _config, _fit, make_tiny_voc

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory)


def _train_argv(data, out, *extra):
    return [
        sys.executable,
        "-m",
        "singleshot",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--image-size",
        "64",
        "--train-split",
        "train",
        "--val-split",
        "none",
        *extra,
    ]


_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_last_pt_and_resume_continues(tmp_path, tiny_voc):
    """What ``timeout`` and batch schedulers do: SIGTERM to every process of the group, workers included."""
    out, log = tmp_path / "run", tmp_path / "err.txt"
    argv = _train_argv(tiny_voc, out, "--epochs", "50", "--workers", "1")
    with log.open("wb") as err_file:
        proc = subprocess.Popen(
            argv, stderr=err_file, stdout=subprocess.DEVNULL, env=_ENV, cwd=ROOT, start_new_session=True
        )
        while "epoch 1/50 step" not in log.read_text(errors="replace"):  # a step is done
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    err = log.read_text(errors="replace")
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "killed by signal" not in err
    assert err.count("stopping after this step") == 1, err
    assert f"continue with: singleshot train --resume {out / 'last.pt'}" in err
    saved = read_checkpoint(out / "last.pt")
    done = saved["epoch"] + 1
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", str(done), "--no-progress"]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + done


def test_an_image_that_fails_to_decode_is_skipped_and_named_once(tmp_path, tiny_voc, capsys):
    data = tmp_path / "voc"
    shutil.copytree(tiny_voc, data)
    name = (data / "ImageSets" / "Main" / "train.txt").read_text().split()[0]
    image = next((data / "JPEGImages").glob(f"{name}.*"))
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(UserError):  # without --skip-invalid: a sentence, at its first decode
        _fit(_config(data, tmp_path / "strict", epochs=1))
    capsys.readouterr()
    result = _fit(_config(data, tmp_path / "r", skip_invalid=True, epochs=2))
    assert result.epochs_done == 2 and not result.interrupted
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if image.name in line]
    assert len(lines) == 1 and "skipping an image" in lines[0], err


def test_without_a_terminal_the_log_is_plain_lines(tmp_path, tiny_voc):
    log = tmp_path / "err.txt"
    argv = _train_argv(tiny_voc, tmp_path / "run", "--epochs", "2", "--workers", "0")
    with log.open("wb") as err_file:
        assert (
            subprocess.run(argv, stderr=err_file, stdout=subprocess.DEVNULL, env=_ENV, cwd=ROOT).returncode
            == 0
        )
    err = log.read_text()
    assert "\r" not in err
    steps = [line for line in err.splitlines() if line.startswith("epoch 2/2 step ")]
    assert steps and all(" loss " in line and " left" in line for line in steps), err
    assert sum(line.startswith("epoch ") and " done: loss " in line for line in err.splitlines()) == 2


def test_a_full_disk_stops_the_run_in_one_sentence_and_keeps_the_last_checkpoint(
    tmp_path, tiny_voc, monkeypatch
):
    import singleshot.models

    real, saves = singleshot.models.save_checkpoint, []

    def full_disk_on_second_last_pt(path, *args, **kwargs):
        if Path(path).name == "last.pt":
            saves.append(path)
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(singleshot.models, "save_checkpoint", full_disk_on_second_last_pt)
    out = tmp_path / "r"
    with pytest.raises(UserError, match="No space left on device") as caught:
        _fit(_config(tiny_voc, out, epochs=2))
    message = str(caught.value)
    assert str(out / "last.pt") in message and "--resume" in message and "\n" not in message
    assert read_checkpoint(out / "last.pt")["epoch"] == 1  # the first epoch's checkpoint, intact
