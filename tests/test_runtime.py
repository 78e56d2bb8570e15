"""singleshot.runtime: PyTorch against onnxruntime and OpenVINO on the same weights, the graph cache, and
eval / detect of an exported graph.

Each model is exported once per module (the cache folder is shared); exports take seconds, so the tests that
export are marked slow. The OpenVINO cases run only where openvino is installed.
"""

import copy
import importlib.util
import json

import numpy as np
import pytest
import torch

from singleshot import runtime
from singleshot.cli import main
from singleshot.errors import UserError
from singleshot.models import DEFAULT_MODEL, build_model, save_checkpoint

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
GRAPH_RUNTIMES = [
    "onnxruntime",
    pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")),
]
SETTINGS = {"score_threshold": 0.05, "nms_threshold": 0.45, "candidates_per_class": 60, "max_detections": 40}


def _model(arch: str, seed: int = 0):
    """A randomly initialised SSD (3 classes) whose class scores are spread out (random head biases)."""
    torch.manual_seed(seed)
    kwargs = {"image_size": 160} if arch == DEFAULT_MODEL else {}
    model = build_model(arch, num_classes=4, class_names=["cat", "dog", "bird"], **kwargs)
    with torch.no_grad():
        for head, spread in ((model.head.classification, 1.5), (model.head.regression, 0.5)):
            for conv in head.modules():
                if isinstance(conv, torch.nn.Conv2d) and conv.bias is not None:
                    torch.nn.init.xavier_uniform_(conv.weight)  # scores that follow the image
                    conv.bias.normal_(0.0, spread)
    for key, value in SETTINGS.items():
        setattr(model, key, value)
    return model.eval()


def _images(sizes, seed: int = 1) -> list[torch.Tensor]:
    """Noise plus a smooth gradient: uint8 Tensor[3, h, w] of each size."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        noise = torch.randint(0, 256, (3, h, w), generator=g).float()
        ramp = torch.linspace(0, 255, w).expand(3, h, w)
        out.append((0.5 * noise + 0.5 * ramp).to(torch.uint8))
    return out


def _assert_same(got, want, *, box_atol=0.05):
    """The same detections per image, matched one to one (near-equal scores may come in either order):
    labels equal, boxes within ``box_atol`` pixels, scores within 1e-5."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g["scores"]) == len(w["scores"]) > 0
        assert np.all(np.diff(g["scores"].numpy()) <= 1e-6), "best first"
        # At the max_detections cut, boxes of equal scores may be kept in either runtime: same scores there
        last = float(w["scores"].min())
        np.testing.assert_allclose(g["scores"][g["scores"] <= last + 1e-5].numpy(), last, atol=1e-5)
        g = {k: v[g["scores"] > last + 1e-5] for k, v in g.items()}
        w = {k: v[w["scores"] > last + 1e-5] for k, v in w.items()}
        g_rows = torch.cat([g["boxes"], 1e3 * g["scores"][:, None], 1e6 * g["labels"][:, None].float()], 1)
        w_rows = torch.cat([w["boxes"], 1e3 * w["scores"][:, None], 1e6 * w["labels"][:, None].float()], 1)
        gaps = (g_rows[:, None, :] - w_rows[None, :, :]).abs()  # (K, K, 6); labels weigh 1e6, scores 1e3
        worst = gaps.amax(-1)  # (K, K)
        nearest = worst.argmin(1)
        assert len(set(nearest.tolist())) == len(nearest), "one to one"
        matched = gaps[torch.arange(len(nearest)), nearest]  # (K, 6)
        assert matched[:, 5].max() == 0, "same labels"
        assert matched[:, 4].max() <= 1e-2, "scores within 1e-5"
        assert matched[:, :4].max() <= box_atol, "boxes within box_atol pixels"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("graphs")


@pytest.fixture(scope="module", params=[DEFAULT_MODEL, "ssdlite320_mobilenet_v3_large"])
def model(request):
    return _model(request.param)


@pytest.mark.slow
@pytest.mark.parametrize("name", GRAPH_RUNTIMES)
def test_graph_runtimes_predict_what_pytorch_predicts(model, name, cache, monkeypatch):
    images = _images([(120, 200), (120, 200), tuple(model.image_size), (97, 61)])
    want = model.predict(images)
    engine = runtime.load(model, runtime=name, cache=cache, threads=1)
    assert isinstance(engine, runtime.GraphEngine) and engine.runtime == name
    _assert_same(engine.predict(images), want)
    _assert_same(engine.predict(images[1:2]), want[1:2])  # batch 1
    # without the cache argument: the graph of the cache folder the environment names, not exported again
    monkeypatch.setenv(runtime.CACHE_ENV, str(cache))
    assert runtime.load(model, runtime=name).path == engine.path
    # detect: uint8 images already at the input size, boxes in the pixels asked for
    at_size = torch.stack(
        [torch.nn.functional.interpolate(im[None].float(), size=model.image_size)[0] for im in images]
    )
    at_size = at_size.round().to(torch.uint8)
    sizes = [(50, 80)] * len(images)
    torch_engine = runtime.load(model, runtime="torch")
    _assert_same(engine.detect(at_size, sizes), torch_engine.detect(at_size, sizes), box_atol=0.02)


@pytest.mark.slow
def test_the_graph_is_exported_once_per_weights_and_settings(cache, tmp_path, monkeypatch):
    model = _model(DEFAULT_MODEL)
    first = runtime.load(model, runtime="onnxruntime", cache=tmp_path)
    assert runtime.load(model, runtime="onnxruntime", cache=tmp_path) is first  # no export, no new session
    assert [p.suffix for p in tmp_path.iterdir()] == [".onnx"]

    import singleshot.export

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    with monkeypatch.context() as patch:
        patch.setattr(singleshot.export, "export_onnx", no_export)
        same = runtime.load(copy.deepcopy(model), runtime="onnxruntime", cache=tmp_path)  # same weights
        assert same.path == first.path
        if HAS_OPENVINO:
            assert runtime.load(model, runtime="openvino", cache=tmp_path).path == first.path

    model.score_threshold = 0.2  # a setting
    second = runtime.load(model, runtime="onnxruntime", cache=tmp_path)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # the weights, in place
    third = runtime.load(model, runtime="onnxruntime", cache=tmp_path)
    assert len({first.path, second.path, third.path}) == 3
    assert sorted(tmp_path.iterdir()) == sorted({first.path, second.path, third.path})
    assert all(not p.name.startswith(".") for p in tmp_path.iterdir()), "no temporary file left"
    assert second.score_threshold == 0.2 and json.loads(json.dumps(third.settings))["score_threshold"] == 0.2


def test_auto_keeps_pytorch_on_a_gpu_and_prefers_a_graph_runtime_on_the_cpu(monkeypatch):
    assert runtime.choose_runtime("auto", "cuda") == "torch"
    assert runtime.choose_runtime("torch", "cpu") == "torch"
    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ["torch", "onnxruntime", "openvino"])
    assert runtime.choose_runtime("auto", "cpu") == runtime.AUTO_ORDER[0]
    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ["torch", "onnxruntime"])
    assert runtime.choose_runtime("auto", "cpu") == "onnxruntime"
    with pytest.raises(UserError, match="openvino is not installed"):
        runtime.choose_runtime("openvino", "cpu")
    with pytest.raises(UserError, match="runs on the CPU"):
        runtime.choose_runtime("onnxruntime", "cuda")
    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ["torch"])
    assert runtime.choose_runtime("auto", "cpu") == "torch"
    with pytest.raises(UserError, match=r"\.onnx file needs onnxruntime"):
        runtime.choose_runtime("auto", "cpu", graph=True)
    with pytest.raises(UserError, match="unknown"):
        runtime.choose_runtime("tensorrt", "cpu")


@pytest.mark.slow
def test_auto_on_the_cpu_runs_the_fastest_measured_and_remembers_it(tmp_path, monkeypatch):
    model = _model(DEFAULT_MODEL)
    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ["torch", "onnxruntime"])
    timed = []

    def measure(seconds):
        def time_it(engine, batch):
            timed.append((engine.runtime, batch))
            return seconds[engine.runtime]

        return time_it

    slow_torch = measure({"torch": 0.02, "onnxruntime": 0.01})
    engine = runtime.fastest_engine(model, batch=4, threads=1, cache=tmp_path, measure=slow_torch)
    assert isinstance(engine, runtime.GraphEngine) and engine.runtime == "onnxruntime"
    assert sorted(timed) == [("onnxruntime", 4), ("torch", 4)]
    assert engine.choice == {
        "runtime": "onnxruntime",
        "seconds": {"torch": 0.02, "onnxruntime": 0.01},
        "batch": 4,
        "measured": True,
    }
    assert "onnxruntime 10.0 ms, torch 20.0 ms; measured now" in runtime.describe_choice(engine)

    # kept in the cache: the same graph, threads and batch are not measured again
    timed.clear()
    again = runtime.fastest_engine(model, batch=4, threads=1, cache=tmp_path, measure=slow_torch)
    assert timed == [] and again.runtime == "onnxruntime" and again.choice["measured"] is False
    assert "measured before" in runtime.describe_choice(again)
    # another batch size is measured afresh, and a faster PyTorch wins there
    fast_torch = measure({"torch": 0.005, "onnxruntime": 0.01})
    other = runtime.fastest_engine(model, batch=8, threads=1, cache=tmp_path, measure=fast_torch)
    assert isinstance(other, runtime.TorchEngine) and other.model is model and timed
    stored = json.loads((tmp_path / runtime.CHOICES_FILE).read_text())
    assert sorted(v["runtime"] for v in stored.values()) == ["onnxruntime", "torch"]
    assert all("| 1 threads |" in k for k in stored)

    # a damaged choices file is measured over, never a traceback
    (tmp_path / runtime.CHOICES_FILE).write_text("{not json")
    timed.clear()
    fresh = runtime.fastest_engine(model, batch=4, threads=1, cache=tmp_path, measure=fast_torch)
    assert fresh.runtime == "torch" and len(timed) == 2
    assert runtime.describe_choice(runtime.TorchEngine(model)) is None


class _ClockedEngine:
    """An engine whose ``detect`` advances a fake clock by its costs in turn (and records the order)."""

    image_size = (8, 8)

    def __init__(self, name, costs, clock, calls):
        self.name, self.costs, self.clock, self.calls = name, list(costs), clock, calls

    def detect(self, images, sizes):
        assert images.shape == (len(sizes), 3, 8, 8) and images.dtype == torch.uint8
        self.calls.append(self.name)
        self.clock[0] += self.costs.pop(0) if self.costs else 0.001


def test_interleaved_seconds_alternates_the_engines_and_takes_more_rounds_of_fast_ones():
    clock, calls = [0.0], []
    engines = {
        "torch": _ClockedEngine(
            "torch", [9.0, 0.30, 0.31, 0.90, 0.29], clock, calls
        ),  # warm-up, then a burst
        "onnxruntime": _ClockedEngine("onnxruntime", [9.0, 0.20, 0.60, 0.21, 0.22], clock, calls),
    }
    seconds = runtime.interleaved_seconds(engines, batch=2, budget=1.0, clock=lambda: clock[0])
    # the warm-up is not timed; rounds alternate; three rounds took 1.5 s > 1 s, so it stops there
    assert calls == ["torch", "onnxruntime"] * 4
    assert seconds == {"torch": pytest.approx(0.31), "onnxruntime": pytest.approx(0.21)}
    calls.clear()
    fast = {name: _ClockedEngine(name, [], clock, calls) for name in ("torch", "openvino")}
    runtime.interleaved_seconds(fast, budget=1.0, max_rounds=15, clock=lambda: clock[0])
    assert calls == ["torch", "openvino"] * 16  # 1 ms each: the cap of 15 rounds after the warm-up


@pytest.mark.slow
def test_load_auto_measures_on_the_cpu_and_predicts_what_pytorch_predicts(tmp_path):
    model = _model(DEFAULT_MODEL)
    images = _images([(120, 200), (97, 61)])
    want = model.predict(images)
    engine = runtime.load(model, cache=tmp_path, batch=2, threads=1)
    assert engine.choice["measured"] and set(engine.choice["seconds"]) == set(runtime.installed_runtimes())
    assert engine.runtime == min(engine.choice["seconds"], key=engine.choice["seconds"].get)
    _assert_same(engine.predict(images), want)
    assert runtime.load(model, cache=tmp_path, batch=2, threads=1) is engine  # one measurement per process


def test_the_commands_offer_every_runtime():
    from singleshot.commands.evaluate import RUNTIME_CHOICES

    assert RUNTIME_CHOICES == runtime.RUNTIMES


def test_a_graph_without_singleshot_metadata_is_one_sentence(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(UserError, match="no singleshot metadata"):
        runtime.load(tmp_path / "foreign.onnx", runtime="onnxruntime")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match="not a readable ONNX file"):
        runtime.load(tmp_path / "junk.onnx", runtime="onnxruntime")
    with pytest.raises(UserError, match="does not exist"):
        runtime.load(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="cannot run in --runtime torch"):
        runtime.load(tmp_path / "foreign.onnx", runtime="torch")


@pytest.mark.slow
def test_eval_and_detect_of_the_exported_graph_match_the_checkpoint(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--images", "12", "--classes", "3", "--image-size", "160"]) == 0
    classes = (data / "classes.txt").read_text().split()
    model = _model(DEFAULT_MODEL)
    model.class_names = classes
    model.score_threshold = 0.01
    ckpt = save_checkpoint(tmp_path / "best.pt", model)
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", str(ckpt), "--out", str(onnx_file)]) == 0

    results = {}
    for source, name in ((ckpt, "torch"), (onnx_file, "auto")):
        out = tmp_path / f"{name}.json"
        args = ["eval", str(source), "--data", str(data), "--split", "test", "--workers", "0"]
        assert main([*args, "--runtime", name, "--json", str(out), "--no-progress"]) == 0
        results[name] = json.loads(out.read_text())
    assert results["torch"]["map"] > 0.0
    assert results["auto"]["map"] == pytest.approx(results["torch"]["map"], abs=1e-3)
    assert results["auto"]["per_class"].keys() == results["torch"]["per_class"].keys()
    capsys.readouterr()

    images = sorted((data / "JPEGImages").iterdir())[:3]
    found = {}
    for source, name in ((ckpt, "torch"), (onnx_file, "onnxruntime")):
        out = tmp_path / f"det-{name}"
        args = ["detect", str(source), *map(str, images), "--out", str(out), "--no-draw"]
        assert main([*args, "--runtime", name, "--score-threshold", "0.1"]) == 0
        found[name] = json.loads((out / "detections.json").read_text())
    assert found["onnxruntime"]["class_names"] == found["torch"]["class_names"] == classes
    for got, want in zip(found["onnxruntime"]["images"], found["torch"]["images"]):
        assert (got["width"], got["height"]) == (want["width"], want["height"])
        assert len(got["detections"]) == len(want["detections"])
        assert all(d["score"] > 0.1 for d in got["detections"])
        got_scores = sorted(d["score"] for d in got["detections"])
        want_scores = sorted(d["score"] for d in want["detections"])
        np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
