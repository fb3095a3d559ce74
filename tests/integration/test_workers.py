"""The spout101 workers against the real pachd of the local stack.

No worker pod ever runs here, so the consumer runs in this process or as a
subprocess pointed at pachd with SPOUT_PACHD_ADDRESS, and the processor runs
over the spout's files downloaded into a temp dir, as /pfs/<input> would hold them.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spout101 import consumer
from spout101.consumer import EmulatedSource, Target

pytestmark = pytest.mark.integration

CONTEXT = Path(__file__).resolve().parents[2] / "images" / "spout101"


@pytest.fixture
def repo(pachd_client: Any) -> Iterator[str]:
    """A fresh repo standing in for the spout's output repo; deleted afterwards."""
    name = f"spout101-it-{uuid.uuid4().hex[:10]}"
    pachd_client.create_repo(name, description="spout101 worker test")
    yield name
    pachd_client.delete_repo(name, force=True)


def commits_oldest_first(client: Any, repo: str) -> list[Any]:
    return list(reversed(list(client.list_commit(repo))))


def files_at(client: Any, commit: Any) -> dict[str, int]:
    return {info.file.path: info.size_bytes for info in client.list_file(commit, "/")}


def assert_each_commit_adds_one_batch(client: Any, repo: str) -> list[Any]:
    """Every commit is closed and adds exactly a 1024- and a 2048-byte file named by its sha256.

    A Pachyderm commit shows its parent's files too, so each commit's own
    files are the difference to the commit before it.
    """
    commits = commits_oldest_first(client, repo)
    assert commits, "the consumer made no commit"
    seen: dict[str, int] = {}
    for info in commits:
        assert info.HasField("finishing"), f"commit {info.commit.id} was left open"
        now = files_at(client, info.commit)
        added = {path: size for path, size in now.items() if path not in seen}
        assert sorted(added.values()) == [1024, 2048], f"commit {info.commit.id} added {added}"
        assert set(seen) <= set(now)
        for path, size in added.items():
            data = client.get_file(info.commit, path).read()
            assert len(data) == size
            assert path == "/" + hashlib.sha256(data).hexdigest() + ".txt"
        seen = now
    return commits


def test_consumer_commits_each_batch_as_one_commit(pachd_client: Any, pachd_address: str, repo: str) -> None:
    client = consumer.connect(pachd_address)
    made = consumer.run(
        client, Target(repo, "master"), EmulatedSource(0, 0, (1024, 2048)), threading.Event(), max_rounds=3
    )
    assert made == 3
    assert len(assert_each_commit_adds_one_batch(pachd_client, repo)) == 3


class FailingSecondPut:
    """Wraps the real client; the batch's second put fails as if pachd went away."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._puts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_file_bytes(self, commit: Any, path: str, value: bytes) -> Any:
        self._puts += 1
        if self._puts == 2:
            raise ConnectionError("simulated loss of pachd mid-batch")
        return self._client.put_file_bytes(commit, path, value)


def test_failed_batch_leaves_no_commit(pachd_client: Any, pachd_address: str, repo: str) -> None:
    client = FailingSecondPut(consumer.connect(pachd_address))
    with pytest.raises(ConnectionError):
        consumer.write_batch(client, Target(repo, "master"), [os.urandom(1024), os.urandom(2048)])
    assert list(pachd_client.list_commit(repo)) == []
    # The repo is still usable: the next batch commits normally.
    consumer.write_batch(consumer.connect(pachd_address), Target(repo, "master"), [b"a" * 1024, b"b" * 2048])
    assert len(assert_each_commit_adds_one_batch(pachd_client, repo)) == 1


def start_consumer(pachd_address: str, repo: str) -> subprocess.Popen[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPOUT_", "PPS_", "PACH_"))  # nothing from the caller's pachd setup
    }
    env.update(
        PYTHONPATH=str(CONTEXT),
        SPOUT_PACHD_ADDRESS=pachd_address,
        SPOUT_REPO=repo,
        SPOUT_INTERVAL_MIN="0",
        SPOUT_INTERVAL_MAX="0",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "spout101.consumer"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_mid_run_leaves_no_open_commit(pachd_client: Any, pachd_address: str, repo: str) -> None:
    proc = start_consumer(pachd_address, repo)
    try:
        deadline = time.monotonic() + 60
        # With a zero interval the consumer writes back to back, so the signal
        # lands while it is writing a batch.
        while len(list(pachd_client.list_commit(repo))) < 5:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the consumer made fewer than 5 commits in 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(stderr)  # shown by `pytest -rA`: the README quotes it
    assert proc.returncode == 0, stderr
    assert "Received SIGTERM, stopping after the current batch" in stderr
    assert "Consumer stopped cleanly after" in stderr
    stopped_after = int(stderr.rsplit("Consumer stopped cleanly after ", 1)[1].split()[0])
    commits = assert_each_commit_adds_one_batch(pachd_client, repo)
    assert len(commits) == stopped_after >= 5
    head = pachd_client.inspect_branch(repo, "master").head
    assert head.id == commits[-1].commit.id


def test_processor_sorts_the_spouts_files(
    pachd_client: Any, pachd_address: str, repo: str, tmp_path: Path
) -> None:
    consumer.run(
        consumer.connect(pachd_address),
        Target(repo, "master"),
        EmulatedSource(0, 0, (1024, 2048)),
        threading.Event(),
        max_rounds=2,
    )
    # Stage the head commit as the processor pipeline would see it under /pfs/spout.
    head = commits_oldest_first(pachd_client, repo)[-1].commit
    input_dir = tmp_path / "pfs" / "spout"
    input_dir.mkdir(parents=True)
    sizes = {}
    for path, size in files_at(pachd_client, head).items():
        (input_dir / path.lstrip("/")).write_bytes(pachd_client.get_file(head, path).read())
        sizes[path.lstrip("/")] = size
    assert sorted(sizes.values()) == [1024, 1024, 2048, 2048]
    output_dir = tmp_path / "pfs" / "out"

    # The entry point as a pipeline runs it, with the roots moved by env.
    env = {**os.environ, "PYTHONPATH": str(CONTEXT)}
    env.update(PROCESSOR_INPUT_DIR=str(input_dir), PROCESSOR_OUTPUT_DIR=str(output_dir))
    result = subprocess.run(
        [sys.executable, "-m", "spout101.processor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print(result.stderr)  # shown by `pytest -rA`: the README quotes it
    assert result.returncode == 0, result.stderr
    assert f"Processed 4 files from {input_dir} (0 not matching a size)" in result.stderr
    expected = {f"{'1K' if size == 1024 else '2K'}.txt/{name}": name for name, size in sizes.items()}
    written = {str(p.relative_to(output_dir)): p for p in output_dir.rglob("*") if p.is_file()}
    assert set(written) == set(expected)
    for relative, name in expected.items():
        time_of_day, _, logged_path = written[relative].read_text().rstrip("\n").partition(" ")
        assert logged_path == str(input_dir / name)
        assert time_of_day.count(":") == 2


def test_consumer_commits_into_a_real_spout_through_its_sidecar(stack: Any, pachd_client: Any) -> None:
    """The way it runs in a spout pod: pachd refuses a plain client's commit to the
    spout's output branch, so the consumer talks to the pod's pachd sidecar."""
    import python_pachyderm
    from devstack.sidecar import start_spout_sidecar, stop_spout_sidecar

    name = f"spout101-real-{uuid.uuid4().hex[:6]}"
    pachd_client.create_pipeline_from_request(
        python_pachyderm.parse_dict_pipeline_spec(
            {"pipeline": {"name": name}, "transform": {"image": "x", "cmd": ["x"]}, "spout": {}}
        )
    )
    sidecar = None
    try:
        before = {c.commit.id for c in pachd_client.list_commit(name)}  # pachd's own, if any
        sidecar = start_spout_sidecar(stack, stack.pachds[0], name)
        client = consumer.connect(sidecar.address)
        made = consumer.run(
            client,
            Target(name, "master"),
            EmulatedSource(0, 0, (1024, 2048)),
            threading.Event(),
            max_rounds=3,
        )
        assert made == 3
        ours = [c for c in commits_oldest_first(pachd_client, name) if c.commit.id not in before]
        assert len(ours) == 3
        assert sorted(files_at(pachd_client, ours[-1].commit).values()) == [1024] * 3 + [2048] * 3
    finally:
        if sidecar is not None:
            stop_spout_sidecar(stack, sidecar)
        pachd_client.delete_pipeline(name, force=True)
