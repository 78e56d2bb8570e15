"""The ``singleshot`` command line itself: the parser, its error messages, what building it imports."""

from __future__ import annotations

import pytest

from singleshot.cli import build_parser, main


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
