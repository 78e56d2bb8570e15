"""``singleshot train`` and ``singleshot eval`` as a user runs them: options, config files, errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from singleshot.cli import build_parser, main
from singleshot.commands.train import build_config
from singleshot.engine.config import TrainConfig
from singleshot.engine.training import EPOCH_COLUMNS
from tests.test_engine import make_tiny_voc

FAST = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--image-size",
    "64",
    "--workers",
    "0",
    "--train-split",
    "train",
    "--val-split",
    "val",
    "--no-progress",
]


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory)


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_help_shows_examples_and_the_learning_rate_rule(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "torchrun --nproc_per_node" in text and "--resume runs/a/last.pt" in text
    assert "--val-data coco/instances_val2017.json" in text
    assert "learning rate: without --lr" in text


def test_command_line_overrides_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": "d", "out": "o", "epochs": 7, "batch_size": 5, "gamma": 0.5}))
    config = build_config(_args("--config", str(path), "--epochs", "3"))
    assert (config.data, config.out, config.epochs, config.batch_size, config.gamma) == ("d", "o", 3, 5, 0.5)
    assert config.lr is None and config.schedule == TrainConfig().schedule  # untouched: defaults


def test_unknown_config_key_is_one_clear_sentence(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text('{"data": "d", "out": "o", "epochz": 3}')
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"singleshot train: error: {path}: unknown key 'epochz' (did you mean 'epochs'?)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--data", "d", "--out", "o", "--model", "ssd_smal"],
            "--model 'ssd_smal' is not a model; choose one of",
        ),
        (["--data", "d", "--out", "o", "--epochs", "0"], "--epochs 0 cannot work: give at least 1"),
        (["--out", "o"], "--data is required"),
        (["--data", "no/such/folder", "--out", "o"], "no/such/folder"),
        (["--resume", "no/such/last.pt"], "no/such/last.pt does not exist"),
    ],
)
def test_bad_options_and_files_give_one_sentence_and_status_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_model_lists_the_names(capsys):
    from singleshot.models import list_models

    assert main(["train", "--data", "d", "--out", "o", "--model", "yolo"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in list_models())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_voc):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", str(tiny_voc), "--out", str(out), *FAST, "--epochs", "2"]) == 0
    return out


def test_train_writes_the_run(trained_run):
    assert sorted(p.name for p in trained_run.iterdir()) == [
        "best.pt",
        "config.json",
        "curves.png",
        "last.pt",
        "metrics.csv",
    ]
    config = json.loads((trained_run / "config.json").read_text())
    assert config["epochs"] == 2 and config["model"] == "ssd_small" and config["image_size"] == 64
    assert config["lr"] > 0 and config["device"] == "cpu" and config["metric"] == "voc07"  # resolved values
    assert TrainConfig.from_json(trained_run / "config.json").epochs == 2  # --config accepts it back


def test_resume_of_a_finished_run_asks_for_more_epochs(trained_run, capsys):
    assert main(["train", "--resume", str(trained_run / "last.pt")]) == 2
    assert "already finished 2 epochs; give --epochs larger" in capsys.readouterr().err


def test_resume_refuses_a_weights_only_checkpoint_and_changed_architecture(trained_run, capsys):
    assert main(["train", "--resume", str(trained_run / "best.pt")]) == 2
    assert "resume from the run's last.pt" in capsys.readouterr().err
    assert (
        main(["train", "--resume", str(trained_run / "last.pt"), "--image-size", "96", "--epochs", "3"]) == 2
    )
    assert "--image-size cannot change when resuming" in capsys.readouterr().err
    argv = ["train", "--resume", str(trained_run / "last.pt"), "--model", "ssd300_vgg16", "--epochs", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--model cannot change when resuming" in err and "(it was 'ssd_small')" in err
    assert len(err.splitlines()) == 1
    argv = ["train", "--resume", str(trained_run / "last.pt"), "--freeze", "backbone", "--epochs", "3"]
    assert main(argv) == 2
    assert "--freeze cannot change when resuming" in capsys.readouterr().err


def test_eval_prints_the_table_and_writes_json_and_pr_curves(trained_run, tiny_voc, tmp_path, capsys):
    out_json = tmp_path / "eval" / "test.json"
    plots = tmp_path / "plots"
    argv = [
        "eval",
        str(trained_run / "best.pt"),
        "--data",
        str(tiny_voc),
        "--json",
        str(out_json),
        "--plots",
        str(plots),
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "mAP (voc07)" in printed
        and f"wrote {out_json}" in printed
        and f"wrote {plots / 'pr_curves.png'}" in printed
    )
    result = json.loads(out_json.read_text())
    assert 0 <= result["map"] <= 1 and set(result["per_class"]) == {"circle", "square", "triangle"}
    # the printed mAP is the JSON's fraction in percent (one decimal)
    (map_line,) = [line for line in printed.splitlines() if line.startswith("mAP (voc07)")]
    assert map_line.split()[-1] == "%" and float(map_line.split()[-2]) == pytest.approx(
        100 * result["map"], abs=0.05
    )
    for name, ap in result["per_class"].items():
        (row,) = [line for line in printed.splitlines() if line.split()[:1] == [name]]
        assert row.split()[1] == ("-" if ap is None else f"{100 * ap:.1f}")
    assert result["metric"] == "voc07" and result["split"] == "test" and result["num_images"] == 5
    assert (out_json.parent / "test_pr.png").stat().st_size > 0 and (
        plots / "pr_curves.png"
    ).stat().st_size > 0


def test_eval_bad_checkpoint_is_one_sentence(tmp_path, tiny_voc, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bad), "--data", str(tiny_voc)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_saves_last_pt_and_resume_finishes(tmp_path, tiny_voc):
    """A real SIGINT to a real training process: it stops after its step, saves and says how to resume."""
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "singleshot",
        "train",
        "--data",
        str(tiny_voc),
        "--out",
        str(out),
        "--epochs",
        "50",
        "--batch-size",
        "2",
        "--image-size",
        "64",
        "--workers",
        "1",
        "--train-split",
        "train",
        "--val-split",
        "none",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=Path(__file__).parent.parent
    )
    seen = b""
    while b"epoch 1/50" not in seen:  # the first progress bar: the loop (and its signal handler) is running
        chunk = proc.stderr.read1(4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()  # to the end: the process has exited
    proc.wait(timeout=60)
    err = (seen + rest).decode(errors="replace")
    assert proc.returncode == 130, err
    assert f"continue with: singleshot train --resume {out / 'last.pt'}" in err and "Traceback" not in err

    from singleshot.models import read_checkpoint

    saved = read_checkpoint(out / "last.pt")
    assert saved["epoch"] < 50 and saved["step"] >= 0
    # Resume with fewer epochs than planned, so that it finishes now.
    done_epochs = saved["epoch"] + 1
    assert (
        main(["train", "--resume", str(out / "last.pt"), "--epochs", str(done_epochs), "--no-progress"]) == 0
    )
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + done_epochs


def test_coco_data_is_validated_with_the_coco_metric(tmp_path, capsys):
    from singleshot.data import synthesize

    data = tmp_path / "coco"
    synthesize(data, 12, format="coco", image_size=64, seed=1, num_classes=2)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--image-size",
                "64",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["format"], config["metric"], config["train_split"], config["val_split"]) == (
        "coco",
        "coco",
        "train",
        "test",
    )
    err = capsys.readouterr().err
    assert "validation mAP (coco)" in err
    val_map = float(
        (out / "metrics.csv").read_text().splitlines()[1].split(",")[EPOCH_COLUMNS.index("val_map")]
    )
    line = f"epoch 1/1: validation mAP (coco) {100 * val_map:.1f} %, best {100 * val_map:.1f} %"
    assert line in err


# ------------------------------------------------------------------------------------------ --val-data


@pytest.fixture(scope="module")
def coco_pair(tmp_path_factory):
    """Training and validation data as two single COCO JSONs (12 and 5 images, 3 classes), and a
    validation JSON of 2 classes (5 images)."""
    from singleshot.data import synthesize

    root = tmp_path_factory.mktemp("coco-pair")
    synthesize(root / "train", 12, format="coco", image_size=64, seed=1, num_classes=3, splits="train=1")
    synthesize(root / "val", 5, format="coco", image_size=64, seed=2, num_classes=3, splits="val=1")
    synthesize(root / "val2", 5, format="coco", image_size=64, seed=3, num_classes=2, splits="val=1")
    return (
        root / "train" / "annotations" / "instances_train.json",
        root / "val" / "annotations" / "instances_val.json",
        root / "val2" / "annotations" / "instances_val.json",
    )


FAST_COCO = ["--epochs", "1", "--batch-size", "4", "--image-size", "64", "--workers", "0", "--no-progress"]


@pytest.fixture
def validated(monkeypatch):
    """The image paths of every validation, as :func:`predict_dataset` received them."""
    from singleshot.engine import training

    seen = []

    def spy(model, dataset, **kwargs):
        seen.append([dataset.image_info(i).path for i in range(len(dataset))])
        return predict(model, dataset, **kwargs)

    predict = training.predict_dataset
    monkeypatch.setattr(training, "predict_dataset", spy)
    return seen


def test_val_data_validates_on_that_data_set_and_resume_keeps_it(coco_pair, tmp_path, validated, capsys):
    """A single COCO JSON has no split to validate on; --val-data names the validation JSON. The recorded
    mAP is the one ``singleshot eval`` gives on that JSON, and a resume validates on it again."""
    train_json, val_json, _ = coco_pair
    out = tmp_path / "run"
    argv = ["train", "--data", str(train_json), "--val-data", str(val_json), "--out", str(out), *FAST_COCO]
    assert main(argv) == 0
    val_images = sorted(str(p) for p in (val_json.parent.parent / "val").iterdir())
    assert len(validated) == 1 and sorted(validated[0]) == val_images  # all 5 images of the JSON, only them
    assert f"validating on 5 images of {val_json}" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert (config["val_data"], config["val_split"], config["metric"]) == (str(val_json), None, "coco")
    rows = (out / "metrics.csv").read_text().splitlines()
    val_map = float(rows[1].split(",")[EPOCH_COLUMNS.index("val_map")])

    argv = ["eval", str(out / "best.pt"), "--data", str(val_json), "--workers", "0", "--no-progress"]
    assert main([*argv, "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["num_images"] == 5 and evaluated["map"] == pytest.approx(val_map, rel=1e-5)

    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert len(validated) == 2 and sorted(validated[1]) == val_images
    assert json.loads((out / "config.json").read_text())["val_data"] == str(val_json)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and all(row.split(",")[EPOCH_COLUMNS.index("val_map")] for row in rows[1:])


def test_val_data_with_other_classes_is_one_sentence_naming_both_paths(coco_pair, tmp_path, capsys):
    train_json, _, two_classes = coco_pair
    out = tmp_path / "run"
    argv = ["train", "--data", str(train_json), "--val-data", str(two_classes), "--out", str(out), *FAST_COCO]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"singleshot train: error: --val-data {two_classes} does not have the classes of --data {train_json}: "
        "it lacks class 'triangle'; validate on data with the same classes"
    )
    assert not out.exists()  # refused before writing anything


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no/instances_val.json", "--val-data {} does not exist; give a VOC root"),
        ("empty", "cannot tell the format of --val-data {}: expected a VOC root"),
    ],
)
def test_val_data_that_cannot_be_read_names_the_option_and_the_path(
    coco_pair, tmp_path, capsys, name, message
):
    train_json, _, _ = coco_pair
    (tmp_path / "empty").mkdir()
    path = tmp_path / name
    argv = ["train", "--data", str(train_json), "--val-data", str(path), "--out", str(tmp_path / "r")]
    assert main([*argv, *FAST_COCO]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("singleshot train: error: " + message.format(path)) and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_other_val_data_drops_the_split_chosen_for_the_previous_one(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": "d", "out": "o", "val_split": "none"}))  # a run without validation
    assert build_config(_args("--config", str(path), "--val-data", "v.json")).val_split is None
    config = build_config(_args("--config", str(path), "--val-data", "v", "--val-split", "test"))
    assert (config.val_data, config.val_split) == ("v", "test")
    assert build_config(_args("--config", str(path), "--epochs", "3")).val_split == "none"  # no --val-data


_MAPPED_BYTES = """
import ctypes, sys
from singleshot.cli import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() is True
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd)  # bytes in blocks mapped on their own, handed back when freed
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or __import__("platform").libc_ver() < ("glibc", "2.33"),
    reason="glibc >= 2.33 (mallinfo2) only",
)
def test_the_command_keeps_freed_memory_for_reuse():
    def mapped(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _MAPPED_BYTES, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert mapped("default") >= 64 << 20  # glibc maps a 64 MB block by itself (and unmaps it when freed)
    assert mapped("keep") < 64 << 20  # singleshot's setting: from the heap, kept for the next one


def test_fewer_training_images_than_the_batch_say_an_epoch_is_one_step(tiny_voc, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_voc), "--out", str(out), *FAST, "--batch-size", "64"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["batch_size"] == 64 and " for 1 epoch of 1 step, " in err  # singular counts
    (line,) = [s for s in err.splitlines() if "< batch 64" in s]
    assert line.endswith(
        ": an epoch is one step, so warm-up covers the first 1 epoch"
    )  # warm-up: 1 epoch (default)


def test_train_into_a_folder_holding_a_run_is_refused_and_leaves_it_untouched(trained_run, tmp_path, capsys):
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in trained_run.iterdir()}
    assert main(["train", "--data", str(tiny_voc_of(trained_run)), "--out", str(trained_run), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{trained_run} already holds a run" in err and "Traceback" not in err
    assert f"--resume {trained_run / 'last.pt'}" in err and "--overwrite" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in trained_run.iterdir()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "metrics.csv").write_bytes((trained_run / "metrics.csv").read_bytes())
    data = str(tiny_voc_of(trained_run))
    assert main(["train", "--data", data, "--out", str(empty), *FAST]) == 0  # an empty folder is fine
    assert main(["train", "--data", data, "--out", str(copy), *FAST]) == 2
    assert main(["train", "--data", data, "--out", str(copy), *FAST, "--overwrite"]) == 0
    assert (
        len((copy / "metrics.csv").read_text().splitlines()) == 2
    )  # the 1-epoch run replaced the 2-epoch one


def tiny_voc_of(run):
    return json.loads((run / "config.json").read_text())["data"]
