"""Serving a model: `swcm serve`, LibreTranslate's HTTP API and a try-it page."""

from __future__ import annotations

from .flags import UsageError, add_settings, settings_for

SERVE_FLAGS = {
    "host": "address to listen on (default %(default)s: this machine only; 0.0.0.0 for every interface)",
    "port": "port (default %(default)s, LibreTranslate's; 0: any free port)",
    "batch_size": "texts decoded together at most (default %(default)s)",
    "max_wait_ms": "how long a batch waits for more requests once it holds fewer than --batch-size texts "
    "(default %(default)s ms)",
    "queue_size": "texts waiting to be decoded at most; past it requests get 429 (default %(default)s)",
    "char_limit": "characters per text at most (default %(default)s)",
    "batch_limit": "texts per request at most (default %(default)s)",
    "alternatives_limit": "alternatives (n-best) per text at most (default %(default)s)",
    "api_key": "require this API key (api_key field) in every request (default: none)",
}


def _add_serve(sub) -> None:
    from ..serving.settings import ServeSettings

    p = sub.add_parser(
        "serve",
        help="serve models over LibreTranslate's HTTP API (POST /translate, GET /languages, POST /detect), "
        "with a try-it page at /",
        description="Load each model once and answer LibreTranslate's API, so that its clients (Mastodon, "
        "SearXNG, deep-translator, libretranslatepy, browser extensions) translate with them; requests "
        "arriving together are decoded in batches. GET / is a page to try the models side by side; GET "
        "/models lists them with their measured scores. Needs the serve extra: pip install \"swcm[serve]\".",
    )
    p.add_argument("models", nargs="+", metavar="[NAME=]DIR",
                   help="model directories, each named after its directory (RUN for RUN/finetune/best) or NAME")
    add_settings(p, ServeSettings, SERVE_FLAGS)
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN call the API (repeat; '*': any). Default: none")
    g = p.add_argument_group("decoding")
    g.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    g.add_argument("--engine", choices=["fast", "transformers"],
                   help="default: fast (swcm's decoding loop) for SWCM models on the CPU, transformers' generate() "
                   "on a GPU and for other model families")
    g.add_argument("--quantize", default="none", choices=["none", "int8"], help="int8 weights (fast engine, CPU)")
    g.add_argument("--num-beams", type=int, metavar="N", help="default: what the model's test scores were measured with")
    g.add_argument("--max-new-tokens", type=int, metavar="N", help="default: as measured, else the model's")
    g.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="default: as measured, else the model's")
    p.add_argument("--log-requests", action="store_true", help="log every request")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UsageError(f"swcm serve needs FastAPI and uvicorn ({error.name} is missing): "
                         "pip install \"swcm[serve]\"") from None
    from ..serving.settings import ServeSettings
    from ..serving.server import serve

    settings = ServeSettings(**settings_for(ServeSettings, vars(args)), cors_origins=args.cors_origin)
    if args.engine == "transformers" and args.quantize != "none":
        raise UsageError("--quantize int8 needs the fast engine")
    decoding = {}
    for key in ("num_beams", "max_new_tokens", "no_repeat_ngram_size"):
        value = getattr(args, key)
        if value is not None:
            if value < (0 if key == "no_repeat_ngram_size" else 1):
                raise UsageError(f"--{key.replace('_', '-')} must be at least {0 if key == 'no_repeat_ngram_size' else 1}")
            decoding[key] = value
    return serve(args.models, settings, device=args.device, engine=args.engine,
                 quantize=None if args.quantize == "none" else args.quantize, decoding=decoding,
                 log_requests=args.log_requests)


SUBCOMMANDS = [_add_serve]
