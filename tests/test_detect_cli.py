"""``loopd detect``: the JSON Lines interface other tools call, and the readable verdict."""

from __future__ import annotations

import io
import json

import pytest

from loopd.cli import main

LOOP = "Intro line.\n" + "The cat sat on the mat. " * 12


def _run(monkeypatch, capsys, argv: list[str], stdin: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_jsonl_one_verdict_per_line_in_order(monkeypatch, capsys):
    lines = [
        json.dumps({"id": "a", "text": LOOP, "finish_reason": "length"}),
        json.dumps({"id": 7, "text": "A clean answer.", "token_ids": [1, 2, 3]}),
        json.dumps({"text": "cut", "finish_reason": "repetition"}),
    ]
    status, out, err = _run(monkeypatch, capsys, ["detect", "--jsonl"], "\n".join(lines) + "\n")
    records = [json.loads(x) for x in out.splitlines()]
    assert status == 0 and err == ""
    assert [r["id"] for r in records] == ["a", 7, None]
    assert [r["degenerate"] for r in records] == [True, False, True]
    for key in ("rule", "score", "loop_start", "period", "repeats"):
        assert key in records[0]
    assert LOOP[records[0]["loop_start"] :].startswith("The cat")


def test_malformed_lines_are_reported_in_place_and_exit_2(monkeypatch, capsys):
    stdin = (
        "\n".join(
            [
                '{"text": "fine"}',
                "not json",
                '{"text": 5}',
                "[1]",
                "",
                '{"text": "ok", "token_ids": ["x"]}',
                '{"text": "last"}',
            ]
        )
        + "\n"
    )
    status, out, err = _run(monkeypatch, capsys, ["detect", "-", "--jsonl"], stdin)
    records = [json.loads(x) for x in out.splitlines()]
    assert status == 2
    assert len(records) == 7
    assert [r.get("line") for r in records] == [None, 2, 3, 4, 5, 6, None]
    assert all("error" in r for r in records[1:6])
    assert records[-1]["degenerate"] is False
    assert "line 2" in err


def test_plain_text_marks_the_loop(monkeypatch, capsys):
    status, out, _ = _run(monkeypatch, capsys, ["detect"], LOOP)
    assert status == 0
    assert out.startswith("DEGENERATE (cycle)")
    assert "⟦LOOP→The cat sat" in out


def test_plain_text_clean_and_file_argument(tmp_path, capsys):
    path = tmp_path / "answer.txt"
    path.write_text("Nothing repeats here.\n")
    assert main(["detect", str(path)]) == 0
    assert capsys.readouterr().out.startswith("clean")


def test_missing_file_is_exit_2(capsys, tmp_path):
    assert main(["detect", str(tmp_path / "nope.jsonl"), "--jsonl"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot read" in captured.err


@pytest.mark.parametrize("flag", [["--jsonl"], []])
def test_help_mentions_the_interface(flag, capsys):
    with pytest.raises(SystemExit):
        main(["detect", "--help", *flag])
    assert "--jsonl" in capsys.readouterr().out
