"""The processor worker: sorts the spout's 1 KB and 2 KB messages into two logs.

For every file of its input it writes upstream's line ``<time of day> <path>``
to ``<out>/1K.txt/<name>`` or ``<out>/2K.txt/<name>``. ``1K.txt`` is a
directory holding one one-line file per message (upstream's layout from
Pachyderm 2.1 on): in Pachyderm 2.x two datums may not write the same output
path, so the 1.x habit of appending every line to one ``1K.txt`` is gone.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time
from fnmatch import fnmatch
from pathlib import Path

from spout101.common import LOG_FORMAT, SettingsError, configure_logging, env_str

log = logging.getLogger("spout101.processor")

INPUT_NAME_ENV = "PROCESSOR_INPUT_NAME"
INPUT_DIR_ENV = "PROCESSOR_INPUT_DIR"
OUTPUT_DIR_ENV = "PROCESSOR_OUTPUT_DIR"

DEFAULT_INPUT_NAME = "spout"
DEFAULT_OUTPUT_DIR = "/pfs/out"
PFS_ROOT = "/pfs"
# Upstream globs /pfs/spout/*.txt; the consumer names every message <sha256>.txt.
INPUT_PATTERN = "*.txt"

SIZE_LABELS: Mapping[int, str] = {1024: "1K", 2048: "2K"}


@dataclass(frozen=True)
class ProcessorSettings:
    input_dir: Path
    output_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProcessorSettings:
        name = env_str(env, INPUT_NAME_ENV, DEFAULT_INPUT_NAME)
        if "/" in name:
            raise SettingsError(f"{INPUT_NAME_ENV} is an input name, not a path: got {name!r}")
        input_dir = env_str(env, INPUT_DIR_ENV, f"{PFS_ROOT}/{name}")
        output_dir = env_str(env, OUTPUT_DIR_ENV, DEFAULT_OUTPUT_DIR)
        return cls(Path(input_dir), Path(output_dir))


@dataclass(frozen=True)
class Outcome:
    """What happened to one input file: ``label`` None means its size matched no class."""

    input_path: Path
    size: int
    label: str | None
    output_path: Path | None


def classify(size: int) -> str | None:
    """1024 bytes -> "1K", 2048 bytes -> "2K", anything else -> None."""
    return SIZE_LABELS.get(size)


def format_line(now: time, input_path: str) -> str:
    """Upstream's line: ``str(datetime.now().time()) + " " + file_path + "\\n"``."""
    return f"{now} {input_path}\n"


def output_path(output_dir: Path, label: str, input_path: Path) -> Path:
    """``<out>/<label>.txt/<input basename>``: one path per datum, never shared."""
    return output_dir / f"{label}.txt" / input_path.name


def process_file(input_path: Path, output_dir: Path, now: Callable[[], time]) -> Outcome:
    size = input_path.stat().st_size
    label = classify(size)
    if label is None:
        # Upstream crashes here (str + int); report and carry on instead.
        log.warning(
            "Not matching size: %s is %d bytes, expected one of %s",
            input_path,
            size,
            ", ".join(str(known) for known in SIZE_LABELS),
        )
        return Outcome(input_path, size, None, None)
    target = output_path(output_dir, label, input_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    line = format_line(now(), str(input_path))
    target.write_text(line, encoding="utf-8")
    log.info("%s %s -> %s", label, input_path, target)
    return Outcome(input_path, size, label, target)


def process_dir(input_dir: Path, output_dir: Path, now: Callable[[], time] | None = None) -> list[Outcome]:
    """Process every ``*.txt`` file directly in ``input_dir``, in name order."""
    if not input_dir.is_dir():
        siblings = sorted(p.name for p in input_dir.parent.iterdir()) if input_dir.parent.is_dir() else []
        raise SettingsError(
            f"Input directory {input_dir} does not exist (next to it: {', '.join(siblings) or 'nothing'}); "
            f"set {INPUT_NAME_ENV} to the pipeline's input name or {INPUT_DIR_ENV} to its path"
        )
    clock = now or (lambda: datetime.now().time())
    outcomes: list[Outcome] = []
    for path in sorted(input_dir.iterdir()):
        if not path.is_file():
            log.warning("Skipping %s: not a regular file", path)
            continue
        if not fnmatch(path.name, INPUT_PATTERN):
            log.info("Skipping %s: not a %s file", path, INPUT_PATTERN)
            continue
        outcomes.append(process_file(path, output_dir, clock))
    return outcomes


def main() -> int:
    try:
        configure_logging()
        settings = ProcessorSettings.from_env(os.environ)
        outcomes = process_dir(settings.input_dir, settings.output_dir)
    except SettingsError as err:
        logging.basicConfig(format=LOG_FORMAT)
        log.error("Invalid configuration: %s", err)
        return 2
    unmatched = sum(1 for outcome in outcomes if outcome.label is None)
    log.info(
        "Processed %d files from %s (%d not matching a size)", len(outcomes), settings.input_dir, unmatched
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
