"""`swcm serve`'s recipe: bind the port, load each model once, serve until SIGTERM or Ctrl-C.

The port is bound before the models load, so that a port in use is one line at once rather than
after a minute of loading; uvicorn then serves on that socket. On SIGTERM or Ctrl-C the server
stops accepting connections, answers the requests in hand (the decoding worker finishes them;
past `grace_seconds` the rest are cancelled) and returns, so the command exits with status 0.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from .app import create_app
from .models import check_served_model, load_served_model
from .settings import ServeSettings


def parse_model_args(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """[(name, directory)] from DIR or NAME=DIR arguments; a bare DIR is named after its
    directory, or, for RUN/finetune/best and RUN/finetune/final, after RUN (the demo's runs:
    ws-…, random-…). ValueError for a name used twice."""
    named = []
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not name or os.path.exists(spec):
            directory, name = spec, _default_name(Path(spec))
        named.append((name, Path(directory)))
    names = [n for n, _ in named]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"two models would be named {name!r}; name them NAME=DIR")
    return named


def _default_name(path: Path) -> str:
    path = Path(os.path.abspath(path))
    if path.name in ("best", "final") and path.parent.name == "finetune":
        return path.parent.parent.name
    return path.name


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; OSError in one line when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise OSError(error.errno, "already in use; choose another port with --port", f"{host}:{port}") from None
        raise OSError(error.errno, f"cannot listen there ({error.strerror})", f"{host}:{port}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(model_specs: Sequence[str], settings: ServeSettings, *, device: str | None = None, dtype: str = "auto",
          engine: str | None = None, quantize: str | None = None, decoding: dict | None = None,
          grace_seconds: float = 30.0, log_requests: bool = False) -> int:
    """Serve the models of `model_specs` (DIR or NAME=DIR) until SIGTERM or Ctrl-C; returns 0."""
    settings.check()
    named = parse_model_args(model_specs)
    for _, directory in named:
        check_served_model(directory)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    try:
        models = []
        try:
            for name, directory in named:
                print(f"loading {name} from {directory}", file=sys.stderr, flush=True)
                models.append(load_served_model(name, directory, device=device, dtype=dtype, engine=engine,
                                                quantize=quantize, decoding=decoding))
        except KeyboardInterrupt:  # Ctrl-C while loading: nothing to finish
            print("stopped before serving", file=sys.stderr, flush=True)
            return 0
        app = create_app(models, settings)
        shown = f"[{host}]" if ":" in host else host
        for m in models:
            print(f"  {m.name}: {m.variant or m.model.config.model_type} ({m.task}; {m.engine} engine), writes "
                  f"{', '.join(m.targets)}", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level="info" if log_requests else "warning", access_log=log_requests,
                                timeout_graceful_shutdown=grace_seconds, lifespan="on")
        server = _Server(config)
        print(f"serving {len(models)} model{'s' if len(models) > 1 else ''} on http://{shown}:{port} "
              f"(try-it page: http://{shown}:{port}/); Ctrl-C stops", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
    print("stopped", file=sys.stderr, flush=True)
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, except that a stop asked for by SIGTERM or Ctrl-C ends the command with
    status 0: uvicorn raises the signal again once it has shut down, which would end the process
    with the signal's status instead."""

    @contextlib.contextmanager
    def capture_signals(self):
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
