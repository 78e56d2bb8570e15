"""The run folder's lock, and what a run does when torchrun restarts its workers.

:func:`lock_run_folder` holds ``RUN/.lock`` for the life of a run (rank 0 only under DDP): a second run into
the same folder, in this process or another, is refused in one sentence naming the process that holds it.
The lock is a POSIX record lock (``fcntl.lockf``): the kernel drops it when its process ends, however it
ends (SIGKILL included), so a crash cannot leave a folder locked; it is not inherited by forked children
(DataLoader workers), so a worker outliving its killed parent for a moment does not hold it either. The
file is removed when the run ends; one left by a killed run holds a stale pid and is simply locked again.

:func:`resume_after_restart`: torchrun (``--max-restarts N``) starts every worker again, with the same
command line, when one of them fails; it sets ``TORCHELASTIC_RESTART_COUNT`` to the number of restarts. A
restarted run continues from ``RUN/last.pt`` when this torchrun wrote it (its mtime is later than the start
of the torchrun process, the workers' parent), and may rewrite the other files this torchrun wrote.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import NamedTuple

from singleshot.engine import distributed
from singleshot.engine.distributed import World
from singleshot.errors import UserError

LOCK_FILE = ".lock"
_held: set[str] = set()  # the folders this process has locked (a second lockf here would succeed)


@contextlib.contextmanager
def lock_run_folder(out: str | os.PathLike | None, world: World):
    """Hold ``out/.lock`` while the block runs (rank 0; the other ranks learn whether it got it).

    Makes the folder when it does not exist (and removes it again, when it stayed empty).

    Raises:
        UserError (on every rank): another run holds the folder.
    """
    if not out:
        yield
        return
    held, refusal = None, None
    if world.is_main:
        try:
            held = _acquire(Path(out))
        except UserError as error:
            refusal = str(error)
    refusal = distributed.broadcast_object(refusal, world)
    if refusal is not None:
        raise UserError(refusal)
    try:
        yield
    finally:
        if held is not None:
            _release(*held)


def _acquire(out: Path) -> tuple[Path, int, bool]:
    """``(folder, lock file descriptor, whether the folder was made here)``; UserError when it is held."""
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot make the run folder {out} ({error.strerror or error}); give another --out"
        ) from None
    key = str(out.resolve())
    if key in _held:
        raise UserError(
            f"{out} is in use by another training run (process {os.getpid()}, this one); give another --out"
        )
    path = out / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise UserError(f"cannot lock {path} ({error.strerror}); give another --out") from None
            raise UserError(
                f"{out} is in use by another training run ({_holder(path)}); wait for it to end or give "
                "another --out"
            ) from None
        # The holder before us may have removed the file between our open and our lock: lock the file
        # that is there now.
        if _same_file(fd, path):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held.add(key)
    return out, fd, made


def _release(out: Path, fd: int, made: bool) -> None:
    _held.discard(str(out.resolve()))
    with contextlib.suppress(OSError):
        os.unlink(out / LOCK_FILE)  # while still locked: a run that opened it retries on the new file
    os.close(fd)
    if made:
        with contextlib.suppress(OSError):
            out.rmdir()  # only when empty: the run stopped before writing anything


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(path: Path) -> str:
    """``"process 1234"`` from the lock file, or ``"a process that is starting"`` before it wrote its pid."""
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "a process that is starting"


class Restart(NamedTuple):
    """What a run does after a torchrun restart: the checkpoint to continue from (``resume``: the one the
    command line gives, or this torchrun's ``RUN/last.pt``), and whether the run folder's files are this
    torchrun's own (so a restarted run may write over them)."""

    resume: str | None
    own_files: bool


def resume_after_restart(out: str | None, resume: str | None, world: World, say) -> Restart:
    """Where a run restarted by torchrun continues (rank 0 decides, every rank gets the answer).

    Without a restart (``TORCHELASTIC_RESTART_COUNT`` unset or 0) it is ``Restart(resume, False)``.
    ``say`` prints the one line that tells a restarted run resumes.
    """
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts <= 0 or not out:
        return Restart(resume, False)
    decision = Restart(resume, False)
    if world.is_main:
        decision = _decide(Path(out), resume, _parent_start_time())
        if decision.resume != resume:
            say(f"torchrun restarted the workers (restart {restarts}): resuming from {decision.resume}")
    return Restart(*distributed.broadcast_object(tuple(decision), world))


def _decide(out: Path, resume: str | None, since: float | None) -> Restart:
    """``since``: when this torchrun started (seconds since the epoch), None when unknown."""
    if since is None or not out.is_dir():
        return Restart(resume, False)
    files = [p for p in out.iterdir() if p.name != LOCK_FILE and p.is_file()]
    own = bool(files) and all(p.stat().st_mtime > since for p in files)
    last = out / "last.pt"
    if last.is_file() and last.stat().st_mtime > since:
        return Restart(str(last), own)
    return Restart(resume, own)


def _parent_start_time() -> float | None:
    """When the parent process (torchrun's agent, for its workers) started, in seconds since the epoch;
    None where ``/proc`` does not tell."""
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime, after "pid (comm) "
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    # btime is whole seconds: allow a second of doubt, in favour of not resuming a file written before.
    return boot + ticks / os.sysconf("SC_CLK_TCK") + 1.0 if boot else None
