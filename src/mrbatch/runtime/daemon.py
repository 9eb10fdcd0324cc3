"""Entry point of the long-running processes ``mrbatch up`` starts:

python -m mrbatch.runtime.daemon region|replicator|gateway|commands NAME --config PATH
python -m mrbatch.runtime.daemon supervisor supervisor --config PATH
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ..config.workspace import PRIVATE_UMASK, Workspace
from ..errors import MrbatchError

__all__ = ["main"]


def _logging(label: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {label} %(name)s: %(message)s",
    )


def _stop_on_signal() -> threading.Event:
    """An event SIGTERM and SIGINT set; the handlers do nothing else."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrbatch.runtime.daemon")
    kinds = ["region", "replicator", "gateway", "commands", "supervisor"]
    parser.add_argument("kind", choices=kinds)
    parser.add_argument("name")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    _logging(f"{args.kind}:{args.name}")
    os.umask(PRIVATE_UMASK)
    try:
        # The command server must not import polars (it starts threads, and the server forks):
        # the commands it runs compile no pipeline either.
        ws = Workspace.load(args.config, pipelines=args.kind != "commands")
        ws.make_private()
        if args.kind == "region":
            from ..engine.region import RegionProcess

            RegionProcess(ws, args.name).run()
        elif args.kind == "replicator":
            from .replication import Replicator

            ws.check_region(args.name)
            os.nice(ws.config.replication.nice)
            stop = _stop_on_signal()
            logging.getLogger("mrbatch.replication").info("replicating into %s", args.name)
            Replicator(ws, args.name).run_forever(stop)
        elif args.kind == "supervisor":
            from .restarter import Restarter

            Restarter(ws, _stop_on_signal()).run()
        elif args.kind == "commands":
            from .commands import serve as serve_commands

            serve_commands(ws, _stop_on_signal())
        else:
            from ..gateway.app import serve

            serve(ws)
    except MrbatchError as exc:
        logging.getLogger("mrbatch").error("%s%s", exc, f" (hint: {exc.hint})" if exc.hint else "")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
