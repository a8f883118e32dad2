"""The ``cdclip`` dispatcher: help, version, list, unknown commands."""

from __future__ import annotations

import pytest

from cdclip import __version__
from cdclip.cli import COMMANDS, main


def test_list_prints_registered_components(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("cda", "js_divergence", "par", "superclass_prototypes", "openclip:<name>"):
        assert name in out
    assert main(["list", "--kind", "loss"]) == 0
    losses = capsys.readouterr().out
    assert "boundary_enhanced_loss" in losses and "cda " not in losses


def test_help_version_and_unknown_command(capsys):
    assert main([]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["nope"])
    assert info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_every_command_module_has_the_interface():
    import importlib

    for name, (module, _) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.run), name


@pytest.mark.slow
def test_demo_writes_a_report_with_pictures_and_marks_random_weights(tmp_path, tiny_backbones, capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["demo", "--out", str(tmp_path), "--backbone", "tinyclip-cli:x", "--weights", "none", "--iters",
                     "2", "--long-side", "64", "--device", "cpu"]) == 0  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    assert "Random CLIP weights" in report and "| CDA |" in report and "val mIoU" in report
    pictures = sorted(tmp_path.glob("*.png"))
    assert len(pictures) == 3 and all(f"]({p.name})" in report for p in pictures)
    assert "pseudo-label mIoU" in capsys.readouterr().out


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "(default: refined)" in text and "(default: 512)" in text and "(default: None)" not in text
