"""Unit tests of the spout101 processor: pure helpers plus runs over a temp dir."""

from __future__ import annotations

import logging
import re
from datetime import time
from pathlib import Path

import pytest
from spout101 import processor
from spout101.common import SettingsError
from spout101.processor import (
    ProcessorSettings,
    classify,
    format_line,
    output_path,
    process_dir,
)

NOON = time(12, 0, 0, 123456)


def fixed_clock() -> time:
    return NOON


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00" * size)
    return path


@pytest.mark.parametrize(
    ("size", "label"),
    [(1024, "1K"), (2048, "2K"), (0, None), (1023, None), (1025, None), (2047, None), (4096, None)],
)
def test_classify_by_exact_size(size: int, label: str | None) -> None:
    assert classify(size) == label


def test_format_line_is_upstreams_time_of_day_space_path_newline() -> None:
    assert format_line(NOON, "/pfs/spout/abc.txt") == "12:00:00.123456 /pfs/spout/abc.txt\n"
    # str(time) drops the fraction when it is zero, exactly as upstream's str(now) does.
    assert format_line(time(9, 5, 7), "/x") == "09:05:07 /x\n"


def test_output_path_is_one_file_per_message_under_the_label_directory() -> None:
    assert output_path(Path("/pfs/out"), "1K", Path("/pfs/spout/abc.txt")) == Path("/pfs/out/1K.txt/abc.txt")
    assert output_path(Path("/o"), "2K", Path("/i/def.txt")) == Path("/o/2K.txt/def.txt")


def test_settings_defaults_match_a_pachyderm_pod() -> None:
    settings = ProcessorSettings.from_env({})
    assert settings == ProcessorSettings(Path("/pfs/spout"), Path("/pfs/out"))


def test_settings_input_name_and_dirs_from_env() -> None:
    assert ProcessorSettings.from_env({"PROCESSOR_INPUT_NAME": "my-spout"}).input_dir == Path("/pfs/my-spout")
    settings = ProcessorSettings.from_env(
        {
            "PROCESSOR_INPUT_NAME": "ignored",
            "PROCESSOR_INPUT_DIR": "/tmp/in",
            "PROCESSOR_OUTPUT_DIR": "/tmp/out",
        }
    )
    assert settings == ProcessorSettings(Path("/tmp/in"), Path("/tmp/out"))


def test_settings_reject_a_path_as_input_name() -> None:
    with pytest.raises(SettingsError, match="PROCESSOR_INPUT_NAME is an input name, not a path"):
        ProcessorSettings.from_env({"PROCESSOR_INPUT_NAME": "/pfs/spout"})


def test_process_dir_sorts_files_into_1k_and_2k(tmp_path: Path) -> None:
    in_dir, out_dir = tmp_path / "spout", tmp_path / "out"
    one = write(in_dir / "aaa.txt", 1024)
    two = write(in_dir / "bbb.txt", 2048)
    outcomes = process_dir(in_dir, out_dir, fixed_clock)
    assert [(o.input_path, o.size, o.label) for o in outcomes] == [(one, 1024, "1K"), (two, 2048, "2K")]
    assert (out_dir / "1K.txt" / "aaa.txt").read_text() == f"12:00:00.123456 {one}\n"
    assert (out_dir / "2K.txt" / "bbb.txt").read_text() == f"12:00:00.123456 {two}\n"
    assert sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()) == [
        "1K.txt/aaa.txt",
        "2K.txt/bbb.txt",
    ]


def test_bad_size_is_reported_and_the_rest_still_processed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    in_dir, out_dir = tmp_path / "spout", tmp_path / "out"
    odd = write(in_dir / "odd.txt", 1500)
    write(in_dir / "zzz.txt", 1024)
    outcomes = process_dir(in_dir, out_dir, fixed_clock)
    assert [(o.input_path.name, o.label, o.output_path) for o in outcomes] == [
        ("odd.txt", None, None),
        ("zzz.txt", "1K", out_dir / "1K.txt" / "zzz.txt"),
    ]
    assert f"Not matching size: {odd} is 1500 bytes, expected one of 1024, 2048" in caplog.text
    assert not (out_dir / "2K.txt").exists()


def test_only_txt_files_are_processed_as_upstreams_glob(tmp_path: Path) -> None:
    in_dir, out_dir = tmp_path / "spout", tmp_path / "out"
    write(in_dir / "a.bin", 1024)
    write(in_dir / "sub" / "b.txt", 1024)
    assert process_dir(in_dir, out_dir, fixed_clock) == []
    assert not out_dir.exists()


def test_missing_input_dir_names_the_knobs(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "other").mkdir()
    with pytest.raises(SettingsError) as excinfo:
        process_dir(tmp_path / "spout", tmp_path / "out")
    text = str(excinfo.value)
    assert "does not exist (next to it: other, out)" in text
    assert "PROCESSOR_INPUT_NAME" in text


def test_default_clock_is_the_wall_clock_time_of_day(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.txt", 2048)
    process_dir(tmp_path / "in", tmp_path / "out")
    line = (tmp_path / "out" / "2K.txt" / "a.txt").read_text()
    assert re.fullmatch(r"\d\d:\d\d:\d\d(\.\d{6})? " + re.escape(str(tmp_path / "in" / "a.txt")) + "\n", line)


def test_main_runs_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spout101.processor")
    write(tmp_path / "in" / "a.txt", 1024)
    write(tmp_path / "in" / "b.txt", 7)
    monkeypatch.setenv("PROCESSOR_INPUT_DIR", str(tmp_path / "in"))
    monkeypatch.setenv("PROCESSOR_OUTPUT_DIR", str(tmp_path / "out"))
    assert processor.main() == 0
    assert (tmp_path / "out" / "1K.txt" / "a.txt").is_file()
    assert "Processed 2 files" in caplog.text
    assert "(1 not matching a size)" in caplog.text


def test_main_exits_2_when_the_input_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PROCESSOR_INPUT_DIR", str(tmp_path / "nope"))
    monkeypatch.setenv("PROCESSOR_OUTPUT_DIR", str(tmp_path / "out"))
    assert processor.main() == 2
    assert "Invalid configuration: Input directory" in caplog.text
