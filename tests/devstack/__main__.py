"""Command line for the local stack.

python -m devstack build            build missing binaries into the cache
python -m devstack images           build missing node images into the cache
python -m devstack up [--pachds K]  start the stack in the background (state in --dir)
python -m devstack up --node        ... with a node: pods run (images from `images`)
python -m devstack up --tls-pachd   ... with one more pachd serving TLS from a CA the stack makes
python -m devstack env              print `export` lines for a running stack
python -m devstack down             stop exactly the processes `up` started
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from devstack import build, images
from devstack.stack import Stack, StackError, State

DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".devstack"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["build", "images", "up", "env", "down"])
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default: %(default)s)"
    )
    parser.add_argument("--pachds", type=int, default=1, help="number of pachd instances (default: 1)")
    parser.add_argument(
        "--node",
        action="store_true",
        help="also run a node (containerd, kubelet, kube-scheduler) so pods really run; one pachd",
    )
    parser.add_argument(
        "--tls-pachd",
        action="store_true",
        help="also run a pachd that serves TLS from a CA the stack makes (root; not with --node)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build.build()
        elif args.command == "images":
            images.build_all()
        elif args.command == "up":
            Stack(args.dir).down()  # a stale stack in the same directory goes first
            state = Stack(args.dir).up(args.pachds, node=args.node, tls_pachd=args.tls_pachd)
            print_env(state)
        elif args.command == "env":
            print_env(State.load(args.dir))
        else:
            Stack(args.dir).down()
    except (build.BuildError, images.ImageError, StackError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def print_env(state: State) -> None:
    for key, value in state.env().items():
        print(f"export {key}={shlex.quote(value)}")
    for pachd in state.pachds:
        print(f"# pachd-{pachd.index}: {pachd.address} (Kubernetes namespace {pachd.namespace})")
    if state.tls_pachd is not None:
        tls = state.tls_pachd
        print(f"# TLS pachd: {tls.address} (CA {state.tls_ca}; Kubernetes namespace {tls.namespace})")


if __name__ == "__main__":
    sys.exit(main())
