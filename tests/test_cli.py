"""The ``loopd`` command line: every command registered, and only the one run imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loopd.cli import COMMANDS, main

# A fresh interpreter, since this test process has torch loaded already.
_DETECT_AND_LIST_MODULES = """
import sys
from loopd.cli import main
status = main(["detect", sys.argv[1]])
heavy = ("torch", "transformers", "loopd.embedded", "loopd.loop", "loopd.store")
print("status", status, "loaded", *sorted(m for m in heavy if m in sys.modules))
"""


def test_detect_does_not_import_the_daemon_or_torch(tmp_path):
    answer = tmp_path / "answer.txt"
    answer.write_text("1. Blue jay 2. Blue jay 3. Blue jay 4. Blue jay 5. Blue jay 6. Blue jay\n")
    done = subprocess.run(
        [sys.executable, "-c", _DETECT_AND_LIST_MODULES, str(answer)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DEGENERATE")
    assert done.stdout.rstrip().endswith("status 0 loaded")


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for name, command in COMMANDS.items():
        assert name in out and command.help.split()[0] in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_module_registers_its_parser(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: loopd {name}")


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["detcet"])
    assert exit_.value.code == 2
    assert "invalid choice: 'detcet'" in capsys.readouterr().err
