"""The training engine: schedules, configuration, random states, atomic writes, sharding, curves; and the
training loop end to end on tiny synthetic data (exact resume, Ctrl-C)."""

from __future__ import annotations

import csv
import json
import math
import random
import re

import numpy as np
import pytest
import torch

from singleshot.engine import distributed
from singleshot.engine.config import REFERENCE_BATCH, TrainConfig, default_lr, option_name
from singleshot.engine.distributed import World
from singleshot.engine.schedule import WarmupSchedule, lr_factor
from singleshot.engine.state import (
    atomic_write_bytes,
    capture_rng,
    epoch_seed,
    restore_rng,
    seed_everything,
    write_csv,
)
from singleshot.errors import UserError


def make_tiny_voc(tmp_path_factory):
    """A tiny synthetic VOC data set (train 17, val 2, test 5 images of 96 px, 3 classes), made once per
    test process and shared by the engine, CLI, distributed and demo tests."""
    from singleshot.data import synthesize

    path = tmp_path_factory.getbasetemp() / "tiny-voc"
    if not (path / "ImageSets").exists():
        synthesize(path, 24, image_size=96, seed=0, num_classes=3, overwrite=True)
    return path


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory)


# ------------------------------------------------------------------------------------------ schedules


def test_warmup_is_linear_from_the_factor_to_one():
    kw = {"schedule": "step", "warmup_steps": 10, "warmup_factor": 0.1}
    assert lr_factor(0, 100, **kw) == pytest.approx(0.1)
    assert lr_factor(5, 100, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(10, 100, **kw) == 1.0 and lr_factor(50, 100, **kw) == 1.0


def test_step_schedule_divides_at_each_milestone():
    kw = {"schedule": "step", "milestones": [80, 100], "gamma": 0.1}
    assert [lr_factor(s, 120, **kw) for s in (0, 79, 80, 99, 100, 119)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_cosine_schedule_halves_midway_and_reaches_the_final_factor():
    assert lr_factor(0, 100, schedule="cosine") == 1.0
    assert lr_factor(50, 100, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, schedule="cosine", final_factor=0.05) == pytest.approx(0.05)
    values = [lr_factor(s, 100, schedule="cosine") for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increases after warmup


def test_cosine_with_warmup_multiplies_both():
    f = lr_factor(2, 10, schedule="cosine", warmup_steps=4, warmup_factor=0.5)
    assert f == pytest.approx((0.5 + 0.5 * 2 / 4) * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, schedule="linear")


def test_warmup_schedule_drives_the_optimizer_and_resumes_from_its_counter():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param, torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    kw = {"schedule": "step", "warmup_steps": 2, "warmup_factor": 0.5, "milestones": [3]}
    sched = WarmupSchedule(opt, 0.2, 5, **kw)
    seen = [sched.step() for _ in range(4)]
    assert seen == pytest.approx([0.1, 0.15, 0.2, 0.02])
    assert all(g["lr"] == pytest.approx(0.02) for g in opt.param_groups)
    again = WarmupSchedule(opt, 0.2, 5, **kw)
    again.load_state_dict(sched.state_dict())
    assert again.step() == sched.step() == pytest.approx(0.02)


# ------------------------------------------------------------------------------------------ configuration


def test_config_json_round_trip(tmp_path):
    config = TrainConfig(data="d", out="o", epochs=3, lr=0.5, milestones=[0.5], augment={"zoom_out": 0.0})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert TrainConfig.from_json(path) == config


def test_config_unknown_key_is_one_sentence_with_a_suggestion(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"epochs": 2, "bacth_size": 4}')
    with pytest.raises(UserError, match=r"c.json: unknown key 'bacth_size' \(did you mean 'batch_size'\?\)"):
        TrainConfig.from_json(path)
    path.write_text('{"zzzz": 1}')
    with pytest.raises(UserError, match="known keys are data, out"):
        TrainConfig.from_json(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ("{epochs: 2}", "not valid JSON"),
        ('{"epochs": "many"}', "epochs"),
    ],
)
def test_config_bad_files(tmp_path, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        TrainConfig.from_json(path)
    with pytest.raises(UserError, match="no such file"):
        TrainConfig.from_json(tmp_path / "missing.json")


def test_config_types_are_checked_and_gently_converted():
    config = TrainConfig.from_dict({"lr": 1, "epochs": 4, "amp": None})
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.amp is None
    with pytest.raises(UserError, match="epochs = 2.5 is not a int"):
        TrainConfig.from_dict({"epochs": 2.5})
    with pytest.raises(UserError, match="skip_invalid = 1 is not a bool"):
        TrainConfig.from_dict({"skip_invalid": 1})
    with pytest.raises(UserError, match="momentum cannot be null"):
        TrainConfig.from_dict({"momentum": None})
    assert TrainConfig.from_dict({"epochs": None}).epochs is None  # null: the recipe chooses


def test_config_validation_names_the_option():
    with pytest.raises(UserError, match="--data is required"):
        TrainConfig(out="o").validate()
    with pytest.raises(UserError, match=r"--batch-size 0 cannot work"):
        TrainConfig(data="d", out="o", batch_size=0).validate()
    with pytest.raises(UserError, match=r"config key 'warmup_factor' 0.0 cannot work"):
        TrainConfig(data="d", out="o", warmup_factor=0.0).validate()
    assert option_name("image_size") == "--image-size" and option_name("gamma") == "config key 'gamma'"
    assert option_name("val_data") == "--val-data"


def test_default_lr_scales_linearly_with_the_global_batch_for_sgd_and_by_its_root_for_adamw():
    small = default_lr("ssd_small", REFERENCE_BATCH, "sgd")
    assert default_lr("ssd_small", 2 * REFERENCE_BATCH, "sgd") == pytest.approx(2 * small)
    assert default_lr("ssd300", REFERENCE_BATCH) == pytest.approx(1e-3)  # the paper's VGG16 rate for batch 32
    adam = default_lr("ssd_small", REFERENCE_BATCH)  # ssd_small's default optimizer is AdamW
    assert adam == default_lr("ssd_small", REFERENCE_BATCH, "adamw") != small
    assert default_lr("ssd_small", 4 * REFERENCE_BATCH) == pytest.approx(2 * adam)


def test_the_optimizer_follows_the_model_and_the_configuration(tmp_path, tiny_voc):
    """ssd_small trains with AdamW and its weight decay unless told otherwise; SGD when asked."""
    from singleshot.engine.config import OPTIMIZERS

    adam = _fit(_config(tiny_voc, tmp_path / "a", epochs=1))
    assert adam.config.optimizer == "adamw" and adam.config.weight_decay == OPTIMIZERS["adamw"]
    checkpoint = torch.load(tmp_path / "a" / "last.pt", map_location="cpu", weights_only=False)
    assert "exp_avg_sq" in next(iter(checkpoint["optimizer"]["state"].values()))  # Adam's second moment
    sgd = _fit(_config(tiny_voc, tmp_path / "s", epochs=1, optimizer="sgd"))
    assert sgd.config.optimizer == "sgd" and sgd.config.weight_decay == OPTIMIZERS["sgd"]
    checkpoint = torch.load(tmp_path / "s" / "last.pt", map_location="cpu", weights_only=False)
    assert set(next(iter(checkpoint["optimizer"]["state"].values()))) == {"momentum_buffer"}


# ------------------------------------------------------------------------------------------ state


def test_epoch_seeds_differ_and_repeat():
    seeds = {epoch_seed(0, e, i) for e in range(5) for i in range(-1, 50)}
    assert len(seeds) == 5 * 51
    assert epoch_seed(3, 1, 7) == epoch_seed(3, 1, 7) != epoch_seed(4, 1, 7)
    assert all(0 <= s < 2**63 for s in seeds)


def test_rng_capture_and_restore_cover_torch_numpy_and_random():
    seed_everything(5)
    state = capture_rng()
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    seed_everything(99)
    restore_rng(state)
    second = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "x.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"half")
    assert path.read_bytes() == b"new contents"  # the old file survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]


def test_write_csv_has_a_header_and_blank_missing_values(tmp_path):
    path = tmp_path / "m.csv"
    write_csv(
        path,
        [{"epoch": 1, "loss": 0.5, "val_map": None}, {"epoch": 2, "loss": 1 / 3}],
        ["epoch", "loss", "val_map"],
    )
    rows = list(csv.DictReader(path.open()))
    assert rows == [
        {"epoch": "1", "loss": "0.5", "val_map": ""},
        {"epoch": "2", "loss": "0.333333", "val_map": ""},
    ]


# ------------------------------------------------------------------------------------------ distributed


def test_shard_pads_training_and_splits_evaluation_exactly():
    worlds = [World(rank=r, size=3) for r in range(3)]
    train = [distributed.shard(range(7), w, pad=True) for w in worlds]
    assert train == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]  # padded by wrapping: 3 steps' worth on every rank
    evals = [distributed.shard(range(7), w, pad=False) for w in worlds]
    assert sorted(i for part in evals for i in part) == list(range(7))
    assert distributed.shard([4, 2], World(), pad=True) == [4, 2]


def test_single_process_helpers_are_identities():
    world = World()
    assert world.is_main and not world.distributed
    assert distributed.all_gather_objects({"a": 1}, world) == [{"a": 1}]
    assert distributed.broadcast_object(3, world) == 3
    assert distributed.setup("cpu") == World(device=torch.device("cpu"))


def test_bad_device_is_a_user_error():
    with pytest.raises(UserError, match="--device 'gpu0' is not a device"):
        distributed.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            distributed.resolve_device("cuda")


# ------------------------------------------------------------------------------------------ curves


def test_training_curves_png(tmp_path):
    from PIL import Image

    from singleshot.render.curves import plot_training_curves

    steps = [
        {"epoch": e / 4, "loss": 3 - e / 4, "loc": 1.0, "conf": 2 - e / 4, "lr": 0.01 * min(1, e / 2)}
        for e in range(1, 9)
    ]
    epochs = [{"epoch": 1, "val_map": None}, {"epoch": 2, "val_map": 0.4}]
    path = tmp_path / "curves.png"
    plot_training_curves(path, steps, epochs, title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 2 * im.height
    plot_training_curves(tmp_path / "empty.png", [], [])  # a run stopped before its first record
    assert (tmp_path / "empty.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------ the loop


def _config(data, out, **kw):
    base = {
        "data": str(data),
        "out": str(out),
        "epochs": 2,
        "batch_size": 4,
        "image_size": 64,
        "workers": 0,
        "train_split": "train",
        "val_split": "none",
        "lr": 0.01,
        "warmup_epochs": 0.5,
        "log_every": 2,
    }
    return TrainConfig(**{**base, **kw})


def _fit(config, resume=None, stop_at=None):
    from singleshot.engine import Trainer

    def stopper(trainer):
        if trainer.global_step == stop_at:
            trainer.stop()

    return Trainer(config, resume=resume, on_step=stopper if stop_at else None, progress=False).fit()


def _loss_columns(path):
    return [
        {k: row[k] for k in ("epoch", "step", "lr", "loss", "loc", "conf")}
        for row in csv.DictReader(path.open())
    ]


def test_a_cpu_run_fits_the_epochs_the_recipe_chose_to_its_time_budget(tmp_path, tiny_voc):
    """17 images: the recipe plans hundreds of epochs; a 1 s budget leaves the range's minimum of 10."""
    from singleshot.engine.recipe import EPOCH_RANGE

    out = tmp_path / "run"
    result = _fit(_config(tiny_voc, out, epochs=None, batch_size=None, val_every=None, time_budget=1.0))
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == EPOCH_RANGE[0] == len(list(csv.DictReader((out / "metrics.csv").open())))
    assert f"{EPOCH_RANGE[0]} instead of" in config["recipe"]["epochs"]
    assert result.epochs_done == result.config.epochs == EPOCH_RANGE[0]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert float(rows[-1]["lr"]) < 0.05 * float(rows[0]["lr"])  # the cosine ran its course in 10 epochs
    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert checkpoint["config"]["epochs"] == EPOCH_RANGE[0]


def test_stopping_and_resuming_gives_the_same_weights_as_one_run(tmp_path, tiny_voc):
    """1 epoch + resume + 1 epoch == 2 epochs, bit for bit; also when stopped in the middle of an epoch.

    17 training images in batches of 4: 4 steps per epoch. Run B stops after step 4 (the end of epoch 1),
    resumes and stops after step 6 (inside epoch 2), resumes and finishes.
    """
    from singleshot.models import read_checkpoint

    straight = _fit(_config(tiny_voc, tmp_path / "a"))
    first = _fit(_config(tiny_voc, tmp_path / "b"), stop_at=4)
    assert first.interrupted and first.epochs_done == 0
    saved = read_checkpoint(tmp_path / "b" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (0, 4)  # epoch 1's steps done, its end-of-epoch work still due
    second = _fit(_config(tiny_voc, tmp_path / "b"), resume=tmp_path / "b" / "last.pt", stop_at=6)
    assert second.interrupted
    saved = read_checkpoint(tmp_path / "b" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert set(saved) >= {"optimizer", "schedule", "scaler", "rng", "history", "config", "partial"}
    third = _fit(_config(tiny_voc, tmp_path / "b"), resume=tmp_path / "b" / "last.pt")
    assert not third.interrupted and third.epochs_done == 2

    a, b = straight.model.state_dict(), third.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["head.regression.0.weight"], _untrained(tiny_voc)["head.regression.0.weight"])
    # The records agree too (losses, learning rates), whatever the interruptions.
    assert _loss_columns(tmp_path / "a" / "metrics.csv") == _loss_columns(tmp_path / "b" / "metrics.csv")
    assert not (tmp_path / "a" / "best.pt").exists()  # no validation split: no best.pt


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_voc):
    """The weights of one epoch (4 steps) in one go, and the last.pt of the same run stopped after step 2
    (the zoo's default boxes: these tests change or drop what a checkpoint stores of them)."""
    out = tmp_path_factory.mktemp("stopped")
    straight = _fit(_config(tiny_voc, out / "a", epochs=1, fit_boxes=False))
    assert _fit(_config(tiny_voc, out / "b", epochs=1, fit_boxes=False), stop_at=2).interrupted
    return straight.model.state_dict(), out / "b" / "last.pt"


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_continues_the_checkpoint_architecture_when_a_builder_default_changed(
    stopped_run, tmp_path, tiny_voc, monkeypatch
):
    """Other default scales change the default boxes but no layer: a run built from this version's defaults
    would load the weights and silently train against other boxes. Resume rebuilds the stored arch_args."""
    from singleshot.models import build_model, read_checkpoint
    from singleshot.models.zoo import SMALL_SCALES, ssd_small

    straight, last = stopped_run
    monkeypatch.setitem(ssd_small.__kwdefaults__, "scales", (0.2, 0.35, 0.55, 0.8, 0.95))
    assert build_model("ssd_small", 4, image_size=64).scales == [0.2, 0.35, 0.55, 0.8, 0.95]  # it did change

    resumed = _fit(_config(tiny_voc, tmp_path / "c", epochs=1), resume=last)
    assert not resumed.interrupted and resumed.model.scales == SMALL_SCALES
    _assert_same_weights(straight, resumed.model.state_dict())
    assert read_checkpoint(tmp_path / "c" / "last.pt")["arch_args"]["scales"] == SMALL_SCALES  # still pinned


def test_a_version_1_checkpoint_resumes_with_this_versions_defaults(stopped_run, tmp_path, tiny_voc):
    from singleshot.models import read_checkpoint

    straight, last = stopped_run
    data = read_checkpoint(last)
    data.update(version=1, arch_args={"image_size": [64, 64]})  # version 1: the arguments given, no priors
    del data["priors"]
    torch.save(data, tmp_path / "old.pt")
    resumed = _fit(_config(tiny_voc, tmp_path / "c", epochs=1), resume=tmp_path / "old.pt")
    _assert_same_weights(straight, resumed.model.state_dict())


def test_resume_refuses_other_default_boxes_data_or_model_in_one_sentence(stopped_run, tmp_path, tiny_voc):
    from singleshot.data import synthesize
    from singleshot.models import read_checkpoint

    _, last = stopped_run
    data = read_checkpoint(last)
    data["priors"][10, 3] += 0.01  # as if this version computed one default box 1 % taller
    torch.save(data, tmp_path / "other_boxes.pt")
    cases = [
        (
            {},
            tmp_path / "other_boxes.pt",
            rf"^checkpoint {re.escape(str(tmp_path / 'other_boxes.pt'))}: the default boxes this singleshot .* "
            "differ from the ones it was trained with; load it with the singleshot version that wrote it",
        ),
        (
            {"image_size": 96},
            last,
            rf"^--image-size 96 contradicts {re.escape(str(last))}, which holds 64; resume",
        ),
        ({"model": "ssd300_vgg16"}, last, "^--model 'ssd300_vgg16' contradicts .* which holds 'ssd_small'"),
        ({"model_options": {"width": 8}}, last, r"^config key 'model_options' \{'width': 8\} contradicts"),
    ]
    for options, path, message in cases:
        with pytest.raises(UserError, match=message):
            _fit(_config(tiny_voc, tmp_path / "c", epochs=1, **options), resume=path)

    other = tmp_path / "two-classes"
    synthesize(other, 8, image_size=64, seed=1, num_classes=2)
    with pytest.raises(
        UserError, match=rf"was trained on other classes than the 2 of {re.escape(str(other))}"
    ):
        _fit(_config(other, tmp_path / "c", epochs=1), resume=last)
    assert not (tmp_path / "c").exists()  # refused before writing anything


def _untrained(data):
    from singleshot.data import open_dataset
    from singleshot.models import build_model

    names = open_dataset(data, split="train").class_names
    seed_everything(0)
    return build_model("ssd_small", len(names) + 1, image_size=64, class_names=names).state_dict()


def test_run_records_checkpoints_and_best_on_improvement(tmp_path, tiny_voc):
    from singleshot.models import load_checkpoint, read_checkpoint

    result = _fit(_config(tiny_voc, tmp_path / "r", epochs=1, val_split="val"))
    out = tmp_path / "r"
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.json",
        "curves.png",
        "last.pt",
        "metrics.csv",
    ]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1" and rows[0]["step"] == "4"
    assert float(rows[0]["val_map"]) == pytest.approx(result.best_map, abs=1e-6)
    best = read_checkpoint(out / "best.pt")
    assert best["epoch"] == 1 and best["metric"] == "voc07" and "optimizer" not in best
    model = load_checkpoint(out / "best.pt")
    assert model.class_names == ["circle", "square", "triangle"] and model.image_size == (64, 64)
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.01 and config["val_split"] == "val" and config["amp"] is False


def test_data_with_errors_stops_before_the_first_step(tmp_path, tiny_voc):
    import shutil

    data = tmp_path / "broken"
    shutil.copytree(tiny_voc, data)
    name = (data / "ImageSets" / "Main" / "train.txt").read_text().split()[0]
    xml = data / "Annotations" / f"{name}.xml"
    xml.write_text(
        re.sub(r"<xmax>[^<]*</xmax>", "<xmax>-5</xmax>", xml.read_text(), count=1)
    )  # a box of negative size

    steps = []
    with pytest.raises(UserError, match=r"check-data.*--skip-invalid"):
        _fit(_config(data, tmp_path / "r"))
    assert not (tmp_path / "r").exists()  # stopped before writing anything

    from singleshot.engine import Trainer

    config = _config(data, tmp_path / "r", skip_invalid=True, epochs=1)
    trainer = Trainer(config, on_step=lambda t: (steps.append(t.global_step), t.stop()), progress=False)
    trainer.fit()
    assert steps == [1]


def test_a_diverging_run_stops_with_advice(tmp_path, tiny_voc):
    with pytest.raises(UserError, match=r"training diverged: the loss became nan .* lower the learning rate"):
        _fit(_config(tiny_voc, tmp_path / "r", lr=1e12, warmup_epochs=0, log_every=1))


# ------------------------------------------------------------------------------------------ validation data


def test_val_data_in_another_format_validates_on_its_val_split(tmp_path, tiny_voc, monkeypatch):
    """VOC training data, a YOLO folder of the same 3 classes for validation: its val split (4 images) is
    what validation sees, and config.json records the split chosen."""
    from singleshot.data import open_dataset, synthesize
    from singleshot.engine import training

    yolo = tmp_path / "yolo"
    synthesize(yolo, 8, format="yolo", image_size=64, seed=5, num_classes=3, splits="train=0.5,val=0.5")
    seen = []

    def spy(model, dataset, **kwargs):
        seen.append(sorted(dataset.image_info(i).path for i in range(len(dataset))))
        return predict(model, dataset, **kwargs)

    predict = training.predict_dataset
    monkeypatch.setattr(training, "predict_dataset", spy)
    result = _fit(_config(tiny_voc, tmp_path / "r", epochs=1, val_data=str(yolo), val_split=None))
    expected = open_dataset(yolo, split="val")
    assert seen == [sorted(expected.image_info(i).path for i in range(len(expected)))] and len(seen[0]) == 4
    assert result.best_map is not None and (tmp_path / "r" / "best.pt").exists()
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["val_data"], config["val_split"], config["format"]) == (str(yolo), "val", "voc")


def _edit_categories(path, edit):
    """Rewrite a COCO JSON: ``edit(category)`` changes a category in place; annotations follow its id."""
    data = json.loads(path.read_text())
    new_ids = {}
    for category in data["categories"]:
        old = category["id"]
        edit(category)
        new_ids[old] = category["id"]
    for annotation in data["annotations"]:
        annotation["category_id"] = new_ids[annotation["category_id"]]
    path.write_text(json.dumps(data))


def _swap_circle_and_square(category):
    category["name"] = {"circle": "square", "square": "circle"}.get(category["name"], category["name"])


def _coco_train_and_val(tmp_path, edit):
    from singleshot.data import synthesize

    synthesize(tmp_path / "train", 8, format="coco", image_size=64, seed=1, num_classes=3, splits="train=1")
    synthesize(tmp_path / "val", 4, format="coco", image_size=64, seed=2, num_classes=3, splits="val=1")
    train_json = tmp_path / "train" / "annotations" / "instances_train.json"
    val_json = tmp_path / "val" / "annotations" / "instances_val.json"
    _edit_categories(val_json, edit)
    return train_json, val_json


def test_val_data_needs_the_same_class_names(tmp_path):
    edit = lambda c: c.update(name="star" if c["name"] == "triangle" else c["name"])  # noqa: E731
    train_json, val_json = _coco_train_and_val(tmp_path, edit)
    message = (
        f"--val-data {val_json} does not have the classes of --data {train_json}: it has class 'star' but not "
        "class 'triangle'; validate on data with the same classes"
    )
    with pytest.raises(UserError) as caught:
        _fit(_config(train_json, tmp_path / "r", train_split=None, val_split=None, val_data=str(val_json)))
    assert str(caught.value) == message
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "edit", [lambda c: c.update(id=c["id"] + 10), _swap_circle_and_square], ids=["category-ids", "order"]
)
def test_val_data_in_another_order_or_with_other_ids_is_read_by_name(tmp_path, edit):
    from singleshot.data import open_dataset
    from singleshot.data.policy import open_training_data

    train_json, val_json = _coco_train_and_val(tmp_path, edit)
    data = open_training_data(data=str(train_json), val_data=str(val_json), say=lambda _: None)
    assert list(data.val.class_names) == list(data.train.class_names) == ["circle", "square", "triangle"]
    own = open_dataset(val_json)  # the file's own numbering
    for i in range(len(own)):  # every object keeps its class name under the training numbering
        names = [own.class_names[k - 1] for k in own[i][1]["labels"].tolist()]
        assert [data.train.class_names[k - 1] for k in data.val[i][1]["labels"].tolist()] == names
    result = _fit(
        _config(train_json, tmp_path / "r", train_split=None, val_split=None, val_data=str(val_json))
    )
    assert result.best_map is not None


def test_config_winograd_reaches_the_model(tmp_path, tiny_voc):
    from singleshot.engine import Trainer
    from singleshot.models.winograd import WinogradConv2d

    # ssd_small at width 16 has 3x3 convolutions of 8 x 16 = 128 channels: Winograd-capable layers.
    for enabled in (True, False):
        config = _config(
            tiny_voc, tmp_path / f"r{enabled}", epochs=1, winograd=enabled, model_options={"width": 16}
        )
        result = Trainer(config, on_step=lambda t: t.stop(), progress=False).fit()
        convs = [m for m in result.model.modules() if type(m) is WinogradConv2d]
        assert convs and all(m.winograd is enabled for m in convs)
        assert result.model.winograd is enabled


def test_the_loader_workers_end_with_the_run_even_when_it_fails(tmp_path, tiny_voc):
    import multiprocessing

    from singleshot.engine import Trainer

    def fail(trainer):
        raise RuntimeError("a failing step")

    before = set(multiprocessing.active_children())
    config = _config(tiny_voc, tmp_path / "r", epochs=1, workers=1)
    with pytest.raises(RuntimeError, match="a failing step") as caught:
        Trainer(config, on_step=fail, progress=False).fit()
    # The traceback still holds the training frame (and its loader), yet the worker has ended.
    assert caught.traceback and set(multiprocessing.active_children()) == before


@pytest.mark.parametrize(
    "cores, device, workers",
    [(1, "cpu", 0), (2, "cpu", 0), (2, "cuda", 1), (3, "cpu", 2), (8, "cpu", 4), (1, "cuda", 0)],
)
def test_default_workers_follow_the_cores_and_leave_two_cpu_cores_to_the_step(
    monkeypatch, cores, device, workers
):
    from singleshot.engine import loader

    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert loader.default_workers(device) == workers
