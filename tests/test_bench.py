"""``singleshot bench``: every row runs at tiny sizes, the table and the markdown block, the CLI's errors,
and the fused channels-last network that ``SSD.predict`` runs on the CPU (equal to the eager model). Times
are checked only for plausibility (positive, under a generous ceiling), never for speed."""

from __future__ import annotations

import argparse
import math
import time

import pytest
import torch

from singleshot import bench
from singleshot.commands import bench as bench_command
from singleshot.errors import UserError
from singleshot.models import build_model
from singleshot.models.inference import FUSING_AVAILABLE, FusedConv2d, inference_network

CPU = torch.device("cpu")


CEILING = 60.0  # seconds: a generous upper bound for any call at these tiny sizes


def _check(row: bench.Row, goal: float | None) -> None:
    assert 0 < row.ours < CEILING and (row.theirs is None or 0 < row.theirs < CEILING)
    assert row.goal == goal
    assert row.ratio is None or math.isclose(row.ratio, row.theirs / row.ours)


def test_time_call_and_time_pair_call_warmup_plus_repeats():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1
        time.sleep(0.002)  # sleeps at least 2 ms: a lower bound that any load only raises

    def b():
        calls["b"] += 1

    assert 0.002 <= bench.time_call(a, repeats=3, warmup=2, device=CPU) < CEILING and calls["a"] == 5
    t_a, t_b = bench.time_pair(a, b, repeats=4, warmup=1, device=CPU)
    assert 0.002 <= t_a < CEILING and 0 < t_b < CEILING and calls == {"a": 10, "b": 5}


def test_loss_and_postprocess_rows():
    _check(bench.bench_loss(CPU, batch=2, repeats=1, warmup=0), 3.0)
    _check(bench.bench_postprocess(CPU, batch=1, repeats=1, warmup=0), 4.0)


def test_detector_outputs_look_like_a_detector():
    from singleshot.priors import TORCHVISION_SSD300, default_boxes

    priors = default_boxes(**TORCHVISION_SSD300, clip="wh")
    logits, deltas = bench.detector_outputs(2, priors, 21, generator=torch.Generator().manual_seed(0))
    scores = logits.softmax(-1)
    assert logits.shape == (2, len(priors), 21) and deltas.shape == (2, len(priors), 4)
    per_image = (scores[..., 1:] > 0.01).sum() / 2
    assert 500 < per_image < 5000 and (scores[..., 1:] > 0.5).any()  # a tail, and confident objects


def test_coco_row_reports_identical_stats():
    row = bench.bench_coco(num_images=30, repeats=1)
    _check(row, 1.0)
    assert row.note == "12 stats identical" and row.reference == "pycocotools"


def test_data_rows_per_format():
    rows = bench.bench_data(
        train_seconds_per_image=1.0, num_images=6, batch=3, workers=0, repeats=1, formats=("voc", "yolo")
    )
    assert [r.name.split(",")[1].strip() for r in rows] == ["voc", "yolo"]
    for row in rows:
        _check(row, 1.0)
        assert row.theirs == 1.0 and row.note.endswith("images/s")
    assert bench.bench_data(num_images=4, batch=2, workers=0, repeats=1, formats=("coco",))[0].ratio is None


@pytest.mark.slow
def test_predict_and_train_rows():
    (row,) = bench.bench_predict(CPU, batches=(1,), repeats=1, warmup=0)
    _check(row, 1.5)
    train = bench.bench_train_step(CPU, batch=1, repeats=1, warmup=0)
    _check(train, 1.2)
    assert train.images == 1


@pytest.mark.slow
def test_runtime_rows_end_with_the_default_auto_path():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from singleshot import runtime

    rows = bench.bench_runtimes(CPU, models=["ssd_small"], batches=(2,), threads=1, repeats=1, warmup=0)
    graph_rows = [r for r in rows if "runtime auto" not in r.name]
    assert [r.reference for r in graph_rows] == [r for r in runtime.installed_runtimes() if r != "torch"]
    (auto,) = [r for r in rows if "runtime auto" in r.name]
    assert rows[-1] is auto and auto.goal == 1.0 and auto.images == 2
    assert auto.reference.startswith("faster graph runtime (") and auto.ours > 0 and auto.theirs > 0
    chosen = auto.name.split("runtime auto (")[1].split(")")[0]
    assert chosen in runtime.installed_runtimes()


def test_table_and_markdown_block(tmp_path):
    rows = [
        bench.Row("fast", 0.001, 0.004, goal=3.0),
        bench.Row("slow", 2.0, 2.2, goal=1.5, note="n"),
        bench.Row("alone", 0.5, None, goal=1.0, reference="x"),
    ]
    table = bench.format_table(rows, CPU)
    assert "| fast | 1.0 ms | 4.0 ms (torchvision) | 4.00x | >= 3x met |" in table
    assert "| slow (n) | 2.00 s | 2.20 s (torchvision) | 1.10x | >= 1.5x **not met** |" in table
    assert "| alone | 500.0 ms | - (x) | - | >= 1x |" in table
    assert table.splitlines()[0].endswith("; default malloc (as a script calling either library)")
    kept = bench.format_table(rows, CPU, kept_freed_memory=True).splitlines()[0]
    assert "malloc keeping freed memory" in kept
    path = tmp_path / "bench.md"
    bench.write_markdown("first", str(path))
    path.write_text("# Title\n\nnotes above\n\n" + path.read_text().split("\n\n", 2)[2] + "\nnotes below\n")
    bench.write_markdown("second", str(path))
    text = path.read_text()
    assert "first" not in text and "second" in text and "notes above" in text and "notes below" in text
    assert text.count(bench.MARK_START) == text.count(bench.MARK_END) == 1


def _args(**kw):
    parser = argparse.ArgumentParser()
    bench_command.add_arguments(parser)
    return parser.parse_args(
        [
            f"--{k.replace('_', '-')}={v}" if v is not True else f"--{k.replace('_', '-')}"
            for k, v in kw.items()
        ]
    )


def test_cli_prints_without_writing(tmp_path, capsys):
    out = tmp_path / "b.md"
    assert bench_command.run(_args(rows="post", repeats=1, out=out, no_write=True)) == 0
    assert "post-processing" in capsys.readouterr().out and not out.exists()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(rows="loss,speed"), "unknown row 'speed'"),
        (dict(device="tpu:x"), "--device"),
        (dict(threads=0), "--threads 0"),
        (dict(repeats=0), "--repeats 0"),
    ],
)
def test_cli_user_errors(kw, message):
    with pytest.raises(UserError, match=message):
        bench_command.run(_args(no_write=True, **kw))


# --- the network SSD.predict runs on the CPU ---------------------------------------------------------------


def _small_model():
    torch.manual_seed(0)
    model = build_model("ssd_small", 4, image_size=96, score_threshold=0.2).eval()
    with torch.no_grad():
        for conv in model.head.classification:  # some confident classes, so that there are detections
            conv.bias.normal_(0.0, 2.0)
    return model


@pytest.mark.skipif(not FUSING_AVAILABLE, reason="oneDNN fused convolutions are not available in this torch")
def test_inference_network_equals_the_model_and_follows_its_weights():
    model = _small_model()
    network = inference_network(model)
    assert network is not model and any(isinstance(m, FusedConv2d) for m in network.modules())
    assert any(m.activation != "none" for m in network.modules() if isinstance(m, FusedConv2d))  # fused
    x = model.normalize(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator()))
    with torch.no_grad():
        for ours, eager in zip(network(x.contiguous(memory_format=torch.channels_last)), model(x)):
            torch.testing.assert_close(ours, eager, rtol=1e-4, atol=1e-4)
    assert inference_network(model) is network  # cached
    images = [torch.randint(0, 256, (3, 80, 120), dtype=torch.uint8, generator=torch.Generator())]
    fast = model.predict(images)[0]
    with torch.no_grad():
        model.head.regression[0].bias.add_(0.5)  # trained in place: a new copy
        assert inference_network(model) is not network
        model.head.regression[0].bias.sub_(0.5)
        handle = model.register_forward_hook(lambda *a: None)  # hooks see the model itself
        assert inference_network(model) is model
        eager = model.predict(images)[0]
        handle.remove()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert inference_network(model) is model
    assert len(fast["scores"]) == len(eager["scores"]) > 0 and torch.equal(fast["labels"], eager["labels"])
    torch.testing.assert_close(fast["scores"], eager["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast["boxes"], eager["boxes"], rtol=0, atol=1e-3)
    assert all(not isinstance(m, FusedConv2d) for m in model.modules())  # the model itself is untouched
    assert inference_network(model.double()) is model
