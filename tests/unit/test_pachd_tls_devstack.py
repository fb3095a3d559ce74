"""The TLS pachd's bookkeeping in the stack, checked without running anything: `down` must find
its network namespace and PID after a restart of the CLI, and the mount check must see exactly
the stack's paths."""

from __future__ import annotations

from pathlib import Path

from devstack import pachd_tls
from devstack.stack import Link, Pachd, State, plan_links


def test_a_saved_tls_pachd_and_its_link_come_back_for_down(tmp_path: Path) -> None:
    link = plan_links(1, "abcd", 7)[0]
    state = State(str(tmp_path), "kubeconfig", 1, 2, 3, "", "pachctl.json", pids={"tls-pachd": 42})
    state.tls_link = link
    state.tls_pachd = Pachd(
        1, "pachyderm-tls", 1650, 1653, pid=42, host=link.pachd_ip, netns=link.netns, tls=True
    )
    state.tls_ca = str(tmp_path / "ca.crt")
    state.save()

    loaded = State.load(tmp_path)
    assert loaded.all_links() == [link]  # what down() deletes
    assert isinstance(loaded.tls_link, Link)
    assert loaded.tls_pachd == state.tls_pachd
    assert loaded.tls_pachd is not None and loaded.tls_pachd.address == f"grpcs://{link.pachd_ip}:1650"
    assert loaded.pids == {"tls-pachd": 42}


def test_only_mounts_at_or_below_the_paths_count(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "\n".join(
            [
                "22 27 0:21 / /proc rw,relatime - proc proc rw",
                "90 27 0:50 / /tmp/devstack-test-ab/pachd-tls-root rw - tmpfs devstack-tls-root rw",
                "91 27 0:51 / /tmp/devstack-test-abc rw - tmpfs other rw",
                "92 27 0:52 / /pachd-tls-cert rw - tmpfs x rw",
            ]
        )
    )
    found = pachd_tls.mounts_mentioning("/tmp/devstack-test-ab", pachd_tls.CERT_DIR, table=str(table))
    assert [line.split()[0] for line in found] == ["90", "92"]


def test_every_step_of_the_command_execs_the_next() -> None:
    """The PID the stack records must end up being pachd's: no step forks."""
    files = pachd_tls.TlsFiles(Path("/s/ca.crt"), Path("/s/tls.crt"), Path("/s/tls.key"))
    args = pachd_tls.command("dvsabcd1", Path("/s/root.sh"), Path("/s/root"), files, ["/bin/pachd"])
    assert args[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert "--fork" not in args and "-f" not in args
    assert args[-4:] == ["/s/root.sh", "/s/root", "/s", "/bin/pachd"]
    assert 'exec chroot "$root" "$@"' in pachd_tls.root_script()
