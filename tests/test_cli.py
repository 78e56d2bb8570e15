"""The ``singleshot`` command line itself: the parser, its error messages, what building it imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from singleshot.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv,command,option",
    [
        (["train", "--epochz", "1"], "train", "--epochs"),
        (["detect", "CKPT", "x.jpg", "--score-treshold", "0.5"], "detect", "--score-threshold"),
        (["eval", "CKPT", "--data", "d", "--bacth-size=4"], "eval", "--batch-size"),
    ],
)
def test_a_misspelt_option_of_a_command_names_that_commands_option(argv, command, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"singleshot {command}: error: unrecognized arguments: ")
    assert f"Did you mean {option}?" in err and f"See 'singleshot {command} --help'." in err


def test_a_misspelt_top_level_option_or_command_points_to_the_top_level_help(capsys):
    for argv, suggestion in ((["--verison"], "--version"), (["trian"], "train")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"Did you mean {suggestion}?" in err and "See 'singleshot --help'." in err


def test_an_unknown_word_without_a_close_option_gets_no_suggestion(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--zzzzzzzz"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzzzz." in err and "Did you mean" not in err


def test_building_the_parser_imports_no_heavy_module():
    """``singleshot --help`` must not pay for torch: command modules import it inside ``run``."""
    heavy = ("torch", "torchvision", "matplotlib", "singleshot.engine.training", "singleshot.models")
    code = (
        "import sys, singleshot.cli; singleshot.cli.build_parser(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_help_of_every_command_shows_its_defaults():
    parser = build_parser()
    train = parser.commands["train"].format_help()
    assert "--epochs" in train and "--batch-size" in train and "--lr" in train
    assert "(default: 0.3)" in parser.commands["detect"].format_help()  # --score-threshold
    assert set(parser.commands) >= {
        "train",
        "eval",
        "detect",
        "export",
        "demo",
        "models",
        "synth",
        "check-data",
    }


@pytest.mark.parametrize("package", ["singleshot.data", "singleshot.engine"])
def test_the_lazy_package_exports_every_name_it_lists(package):
    import importlib

    module = importlib.import_module(package)
    assert set(module.__all__) == set(module._EXPORTS)
    for name in module.__all__:
        value = getattr(module, name)
        assert getattr(importlib.import_module(f"{package}.{module._EXPORTS[name]}"), name) is value
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
