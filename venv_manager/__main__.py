"""`python -m venv_manager serve [--host 127.0.0.1] [--grpc-port 50051] [--rest-port 10900]
[--data DIR] [--token T | --no-token] [--allowed-host H]... [--allowed-origin O]...`: the gRPC
server and its REST mirror over one EnvStore (docs/venv_manager.md)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path


def serve(args: argparse.Namespace) -> None:
    from venv_manager.access import resolve_token
    from venv_manager.envs import EnvStore
    from venv_manager.server import check_listen, grpc_server

    token, token_file = resolve_token(args.token or os.environ.get("VENV_MANAGER_TOKEN"),
                                      args.no_token, Path(args.data).absolute())
    check_listen(args.host, token)
    store = EnvStore(args.data)
    server, grpc_port = grpc_server(store, args.host, args.grpc_port, token)
    rest = None
    if args.rest_port >= 0:
        # Imported only when wanted: FastAPI and uvicorn add ~0.3 s (seconds on a busy machine)
        # to every start, a restart after a crash included.
        import uvicorn

        from venv_manager.rest import app

        api = app(store, token, args.host, tuple(args.allowed_host),
                  tuple(args.allowed_origin))
        rest = uvicorn.Server(uvicorn.Config(api, host=args.host, port=args.rest_port,
                                             log_level="warning"))
        threading.Thread(target=rest.run, daemon=True).start()
        while not rest.started:  # so the line below only appears once both listen
            threading.Event().wait(0.02)
        rest_port = rest.servers[0].sockets[0].getsockname()[1]
    # SIGTERM raises KeyboardInterrupt, set before the line below: whoever reads it may stop
    # us at once. (An Event set from the handler could land while the main thread was just
    # entering its wait, and the wake-up was lost: a stop that hung.)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        # One machine-readable line: whoever started us (e.g. wtb_conf's launcher) reads the
        # ports.
        print(f"venv_manager listening grpc={args.host}:{grpc_port}"
              + (f" rest={args.host}:{rest_port}" if rest else "") + f" data={store.root}"
              + (f" token_file={token_file}" if token_file else ""), flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    if rest:
        rest.should_exit = True
    server.stop(grace=5).wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m venv_manager")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gRPC server and its REST mirror")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--rest-port", type=int, default=10900, help="0 picks a free port, -1: none")
    p.add_argument("--data", default="data/venv_manager", help="envs and env_audit.db")
    p.add_argument("--token", help="require 'authorization: Bearer T' (or $VENV_MANAGER_TOKEN); "
                                   "default: the token in DIR/token, made on first start")
    p.add_argument("--no-token", action="store_true",
                   help="require no token (loopback only): any local process may call it")
    p.add_argument("--allowed-host", action="append", default=[], metavar="H",
                   help="REST: also answer to Host H (repeatable; '*': any)")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="O",
                   help="REST: also answer to browser Origin O (repeatable; '*': any)")
    args = ap.parse_args(argv)
    serve(args)


if __name__ == "__main__":
    sys.exit(main())
