"""DistributedDataParallel end to end: 2 CPU processes (gloo) train 1 epoch on tiny synthetic data.

Each rank runs in its own working folder with the same relative ``--out``: rank 0's folder gets the run's
files and rank 1's stays empty, while both ranks finish with identical weights.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from singleshot.engine.distributed import World, shard
from tests.test_engine import make_tiny_voc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, data: str, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from singleshot.engine import TrainConfig, Trainer, distributed

    folder = os.path.join(root, f"rank{rank}")
    os.makedirs(folder)
    os.chdir(folder)
    world = distributed.setup("cpu")
    try:
        assert world.size == world_size and world.rank == rank
        config = TrainConfig(
            data=data,
            out="run",
            epochs=1,
            batch_size=2,
            image_size=64,
            workers=0,
            train_split="train",
            val_split="test",
            log_every=2,
        )
        result = Trainer(config, world=world, progress=False).fit()
        state = {k: v.clone() for k, v in result.model.state_dict().items()}
        state["_best_map"] = torch.tensor(-1.0 if result.best_map is None else result.best_map)
        state["_lr"] = torch.tensor(result.config.lr)
        # Each rank predicts every other image; all_gather_object gives every rank all of them, in order.
        from singleshot.data import open_dataset
        from singleshot.engine import predict_dataset

        _, targets = predict_dataset(
            result.model, open_dataset(data, split="test"), batch_size=2, world=world, progress=False
        )
        state["_image_ids"] = torch.tensor([t["image_id"] for t in targets])
    finally:
        distributed.teardown()
    torch.save(state, os.path.join(root, f"weights{rank}.pt"))


def test_two_cpu_processes_train_identically_and_only_rank0_writes(tmp_path, tiny_voc):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tiny_voc), str(tmp_path)), nprocs=2, join=True)

    w0 = torch.load(tmp_path / "weights0.pt")
    w1 = torch.load(tmp_path / "weights1.pt")
    best = (float(w0.pop("_best_map")), float(w1.pop("_best_map")))
    lrs = (float(w0.pop("_lr")), float(w1.pop("_lr")))
    ids = (w0.pop("_image_ids").tolist(), w1.pop("_image_ids").tolist())
    assert ids[0] == ids[1] == list(range(5))  # the 5 test images, gathered from both ranks, in order
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key  # DDP keeps every rank's weights (and BN buffers) equal

    untrained = _untrained_state(tiny_voc)
    assert any(not torch.equal(w0[k], untrained[k]) for k in untrained)  # it did train

    written = sorted(p.name for p in (tmp_path / "rank0" / "run").iterdir())
    assert written == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.csv"]
    assert not (tmp_path / "rank1" / "run").exists()  # rank 1 wrote nothing

    assert best[0] >= 0 and best[1] == -1.0  # rank 0 scores the gathered detections; rank 1 has no metric
    # The learning-rate rule: without --lr, the recipe's rate scales with the global batch (2 x 2 images).
    from singleshot.engine.config import default_lr

    assert lrs[0] == lrs[1] == pytest.approx(default_lr("ssd_small", 4))


def _untrained_state(data):
    from singleshot.data import open_dataset
    from singleshot.engine.state import seed_everything
    from singleshot.models import build_model

    names = open_dataset(data, split="train").class_names
    seed_everything(0)
    return build_model("ssd_small", len(names) + 1, image_size=64, class_names=names).state_dict()


def test_shards_of_an_epoch_cover_every_image_once_with_wrapped_padding():
    parts = [shard(range(10), World(rank=r, size=4), pad=True) for r in range(4)]
    assert [len(p) for p in parts] == [3, 3, 3, 3]
    flat = [i for p in parts for i in p]
    assert sorted(set(flat)) == list(range(10)) and len(flat) == 12  # 2 images seen twice, none missed
