"""The run folder's lock (a second concurrent run is refused; a SIGKILL cannot leave it stuck) and torchrun's
restarts (a real ``torchrun --max-restarts 1`` on the CPU with gloo, one worker killed by its pid, ends with
the weights of an uninterrupted run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from singleshot.cli import main
from singleshot.engine.distributed import World
from singleshot.engine.run_lock import LOCK_FILE, Restart, _decide, lock_run_folder
from singleshot.errors import UserError
from singleshot.models import read_checkpoint
from tests.test_engine import make_tiny_voc

ROOT = Path(__file__).parent.parent
_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
_HOLD = (
    "import sys, time\n"
    "from singleshot.engine.distributed import World\n"
    "from singleshot.engine.run_lock import lock_run_folder\n"
    "with lock_run_folder(sys.argv[1], World()):\n"
    "    time.sleep(600)\n"
)


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory)


def _wait_for_pid(path: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.is_file() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"nobody locked {path}")


def test_a_second_run_is_refused_naming_the_holder_and_a_sigkill_frees_the_folder(tmp_path, tiny_voc, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=ROOT, env=_ENV)
    try:
        assert _wait_for_pid(out / LOCK_FILE) == holder.pid
        argv = ["train", "--data", str(tiny_voc), "--out", str(out), "--epochs", "1", "--no-progress"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another training run (process {holder.pid})" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing
        with pytest.raises(UserError, match=f"process {holder.pid}"):
            with lock_run_folder(out, World()):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_FILE).is_file()  # the killed holder left its file, with its pid ...
    with lock_run_folder(out, World()):  # ... and no lock: the next run takes it
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert list(out.iterdir()) == []  # the lock file goes with the run; the folder was there before it
    with lock_run_folder(tmp_path / "new", World()):
        assert (tmp_path / "new" / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()  # made for the lock and still empty: removed again


def test_the_lock_refuses_a_second_run_in_the_same_process_and_is_gone_after_the_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with lock_run_folder(out, World()):
        with pytest.raises(
            UserError, match=f"{out} is in use by another training run \\(process {os.getpid()}"
        ):
            with lock_run_folder(out, World()):
                pass
        (out / "config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # the lock file went, the folder stays
    with lock_run_folder(out, World()):  # released: free again
        pass


def test_a_restart_resumes_only_a_last_pt_this_torchrun_wrote(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "last.pt").write_bytes(b"")
    written = (out / "last.pt").stat().st_mtime
    assert _decide(out, None, written - 10) == Restart(str(out / "last.pt"), True)  # torchrun started before
    assert _decide(out, "a/last.pt", written + 10) == Restart("a/last.pt", False)  # an older run's files
    assert _decide(out, None, None) == Restart(None, False)  # start unknown: never guess
    os.utime(out / "config.json", (written - 20, written - 20))
    assert _decide(out, None, written - 10) == Restart(str(out / "last.pt"), False)  # one file is older
    (out / "last.pt").unlink()
    assert _decide(out, None, written - 30) == Restart(None, True)  # killed before its first last.pt


def _torchrun(data, out, epochs: int, err) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "1",
        "--monitor-interval",
        "0.1",
        "-m",
        "singleshot",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "2",
        "--image-size",
        "64",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--train-split",
        "train",
        "--val-split",
        "none",
        "--no-progress",
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=_ENV)


def _workers(parent: int) -> dict[int, int]:
    """rank -> pid of the processes started by ``parent`` (torchrun's agent)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) != parent:
            continue
        rank = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[int(rank)] = int(entry.name)
    return found


@pytest.mark.slow
def test_torchrun_restart_after_a_killed_worker_resumes_and_ends_with_the_uninterrupted_weights(
    tmp_path, tiny_voc
):
    epochs = 4
    straight, restarted = tmp_path / "straight", tmp_path / "restarted"
    with (tmp_path / "straight.txt").open("wb") as err:
        assert _torchrun(tiny_voc, straight, epochs, err).wait(timeout=600) == 0

    log = tmp_path / "restarted.txt"
    with log.open("wb") as err:
        proc = _torchrun(tiny_voc, restarted, epochs, err)
        while not (restarted / "last.pt").is_file():  # epoch 1 is done
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.02)
        ranks = _workers(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[0], signal.SIGKILL)  # rank 0: the one that writes the files and holds the lock
        assert proc.wait(timeout=600) == 0, log.read_text(errors="replace")
    text = log.read_text(errors="replace")
    assert read_checkpoint(restarted / "last.pt")["epoch"] == epochs
    killed_in = [line for line in text.splitlines() if "resuming from" in line]
    assert killed_in == [f"torchrun restarted the workers (restart 1): resuming from {restarted / 'last.pt'}"]

    a = read_checkpoint(straight / "last.pt")
    b = read_checkpoint(restarted / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    rows = (restarted / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + epochs  # every epoch once: the restart did not train epoch 1 again
