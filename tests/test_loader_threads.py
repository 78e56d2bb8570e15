"""The CPU step's thread count beside the data-loader workers (singleshot.engine.loader.step_threads)."""

import os

import torch

from singleshot.engine.loader import step_threads


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_step_threads_leave_the_workers_their_cores_and_restore_the_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with step_threads(torch.device("cpu"), workers=1) as threads:
        assert threads == torch.get_num_threads() == max(1, _cores() - 1)
    assert torch.get_num_threads() == before
    with step_threads(torch.device("cpu"), workers=_cores() + 3) as threads:
        assert threads == 1  # never fewer than one
    assert torch.get_num_threads() == before


def test_step_threads_keep_an_explicit_setting_and_the_gpu_count(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with step_threads(torch.device("cpu"), workers=1) as threads:
        assert threads == before
    monkeypatch.delenv("OMP_NUM_THREADS")
    with step_threads(torch.device("cuda"), workers=1) as threads:
        assert threads == before
    assert torch.get_num_threads() == before
