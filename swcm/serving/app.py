"""The HTTP API: LibreTranslate's, field for field, plus swcm's own endpoints and the try-it page.

LibreTranslate's endpoints, which its clients (Mastodon, SearXNG, deep-translator,
libretranslatepy, browser extensions) call:

- `POST /translate`: q (a string or a list of strings), source (a code or "auto"), target,
  format ("text" or "html"), alternatives (n-best), api_key; in a JSON body, a form body or the
  query string. Replies {"translatedText": …} (a list for a list), with "detectedLanguage" for
  source "auto" and "alternatives" when asked for.
- `GET /languages`: [{"code", "name", "targets"}] for every language a loaded model reads or writes.
- `POST /detect`: [{"language", "confidence"}] from the scripts of q's letters (`swcm.languages.detect_languages`).
- `GET /health`: {"status": "ok"} while the decoding worker runs.
- `GET /frontend/settings`: the limits and languages LibreTranslate's front ends read.

Errors are LibreTranslate's: {"error": "…"} with 400 for a bad request (a missing q, an unknown
language, a model that does not write the target), 403 for a wrong API key, 429 when the
decoding queue is full, never a traceback.

swcm's additions, which LibreTranslate clients ignore: `GET /models` (each model's variant,
task, languages, test and validation scores), an optional `model` field in /translate, and
`POST /generate` for summarisation and reading-comprehension models. `GET /` is the try-it page.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.examples import pair_separator
from ..languages import detect_languages, language_name, language_scripts
from .markup import join_html, split_html
from .models import ServedModel
from .settings import ServeSettings
from .worker import DecodingWorker, Job, QueueFull, WorkerStopped


class ApiError(Exception):
    """A request the API refuses: `status` and the one-line `message` of {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


MAX_BODY_BYTES = 16 * 1024 * 1024


def create_app(models: list[ServedModel], settings: ServeSettings | None = None):
    """The FastAPI application serving `models` (loaded, named uniquely) with `settings`.

    Its decoding worker starts with the application and, when the application stops (SIGTERM,
    Ctrl-C), finishes the requests in hand before it stops.
    """
    settings = settings or ServeSettings()
    settings.check()
    if not models:
        raise ValueError("no models to serve")
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ValueError("two models have the same name; name them NAME=DIR")
    worker = DecodingWorker(settings.batch_size, settings.max_wait_ms / 1000, settings.queue_size)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop, True)

    # /openapi.json, but not FastAPI's documentation pages: they load their scripts from a CDN,
    # and everything served here works offline
    app = FastAPI(title="swcm serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker, app.state.models, app.state.settings = worker, by_name, settings

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request, error: Exception):
        line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        print(f"swcm serve: {request.method} {request.url.path}: {type(error).__name__}: {line}", file=sys.stderr)
        return JSONResponse({"error": f"internal error: {line}"}, status_code=500)

    # --- the languages ----------------------------------------------------------------------

    translators = [m for m in models if m.task == "mt"]
    # Every language a model reads or writes. An SWCM model reads any text its encoder knows;
    # its tags are the languages it was trained on, so those are what it is offered to read.
    all_langs = list(dict.fromkeys(lang for m in models for lang in m.targets))

    def languages_listing() -> list[dict]:
        return [{"code": lang, "name": language_name(lang),
                 "targets": sorted({t for m in translators for t in m.targets if t != lang})}
                for lang in all_langs]

    # --- request fields ---------------------------------------------------------------------

    async def read_fields(request: Request) -> dict:
        """The request's fields: the query string's, overridden by a JSON or form body's."""
        fields: dict = {}
        for key in request.query_params:
            values = request.query_params.getlist(key)
            fields[key] = values if len(values) > 1 else values[0]
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ApiError(413, f"Invalid request: the body ({int(length):,} bytes) exceeds {MAX_BODY_BYTES:,} bytes")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            try:
                form = await request.form()
            except Exception as error:  # a malformed multipart body
                raise ApiError(400, f"Invalid request: unreadable form body ({error})") from None
            for key in form:
                values = [v for v in form.getlist(key) if isinstance(v, str)]
                if values:
                    fields[key] = values if len(values) > 1 else values[0]
            return fields
        body = await request.body()
        if not body.strip():
            return fields
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise ApiError(400, f"Invalid request: unsupported content type {content_type}; send JSON or a form")
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "Invalid request: the body is not UTF-8") from None
        except json.JSONDecodeError as error:
            raise ApiError(400, f"Invalid request: malformed JSON (line {error.lineno} column {error.colno}: {error.msg})") from None
        if not isinstance(data, dict):
            raise ApiError(400, "Invalid JSON format: a JSON object is expected")
        fields.update(data)
        return fields

    def check_api_key(fields: dict) -> None:
        if settings.api_key is not None and fields.get("api_key") != settings.api_key:
            raise ApiError(403, "Invalid API key" if fields.get("api_key") else
                           "Invalid request: this server needs an API key (api_key)")

    def texts_of(fields: dict, name: str = "q") -> tuple[list[str], bool]:
        """(the texts of field `name`, whether it was a list); ApiError for a missing or empty
        one, a non-string, or one past the limits."""
        q = fields.get(name)
        if q is None or q == "" or q == []:
            raise ApiError(400, f"Invalid request: missing {name} parameter")
        batch = isinstance(q, list)
        texts = q if batch else [q]
        if not all(isinstance(t, str) for t in texts):
            raise ApiError(400, f"Invalid request: {name} must be a string or a list of strings")
        if batch and len(texts) > settings.batch_limit:
            raise ApiError(400, f"Invalid request: request ({len(texts)} texts) exceeds text limit "
                           f"({settings.batch_limit} texts; swcm serve --batch-limit)")
        for text in texts:
            if len(text) > settings.char_limit:
                raise ApiError(400, f"Invalid request: request ({len(text)} characters) exceeds text limit "
                               f"({settings.char_limit} characters; swcm serve --char-limit)")
        return texts, batch

    def choose_model(fields: dict, target: str, task: str = "mt") -> ServedModel:
        name = fields.get("model")
        if name is not None:
            if name not in by_name:
                raise ApiError(400, f"Invalid request: no model named {name!r}; loaded: {', '.join(by_name)}")
            model = by_name[name]
            if model.task != task:
                raise ApiError(400, f"Invalid request: model {name!r} is a {model.task} model, not a "
                               f"{'translation' if task == 'mt' else task} model"
                               + ("; use POST /generate" if task == "mt" else ""))
            if target not in model.targets:
                raise ApiError(400, f"{target} is not supported by model {name!r}: it writes "
                               f"{', '.join(model.targets) or 'no language it names'}")
            return model
        for model in models:
            if model.task == task and target in model.targets:
                return model
        offered = sorted({t for m in models if m.task == task for t in m.targets})
        raise ApiError(400, f"{target} is not supported" + (f"; targets here: {', '.join(offered)}" if offered else ""))

    async def decode(request: Request, model: ServedModel, texts: list[str], target: str, source: str | None,
                     options: tuple = ()) -> list[list[str]]:
        """Each text's outputs (best first), from the worker; "" for an empty text. Cancels the
        job when the client disconnects before it is done."""
        wanted = [i for i, t in enumerate(texts) if t.strip()]
        outputs: list[list[str]] = [[""] for _ in texts]
        if not wanted:
            return outputs
        job = Job(model, [texts[i] for i in wanted], target, source, options)
        try:
            future = worker.submit(job)
        except QueueFull as error:
            raise ApiError(429, f"Slowdown: {error}") from None
        except WorkerStopped as error:
            raise ApiError(503, str(error)) from None
        waiting = asyncio.wrap_future(future)
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({waiting, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is stopping past its grace period
            worker.cancel(job)
            raise
        finally:
            watcher.cancel()
        if waiting not in done:
            worker.cancel(job)
            waiting.cancel()
            raise ApiError(499, "the client closed the connection")
        try:
            results = waiting.result()
        except WorkerStopped as error:
            raise ApiError(503, str(error)) from None
        for i, result in zip(wanted, results):
            outputs[i] = result
        return outputs

    # --- LibreTranslate's endpoints -----------------------------------------------------------

    @app.post("/translate")
    async def translate(request: Request):
        fields = await read_fields(request)
        check_api_key(fields)
        texts, batch = texts_of(fields)
        source = fields.get("source") or "auto"
        target = fields.get("target")
        if not target:
            raise ApiError(400, "Invalid request: missing target parameter")
        if not isinstance(source, str) or not isinstance(target, str):
            raise ApiError(400, "Invalid request: source and target must be language codes")
        text_format = fields.get("format") or "text"
        if text_format not in ("text", "html"):
            raise ApiError(400, f"{text_format} format is not supported; use text or html")
        try:
            alternatives = int(fields.get("alternatives") or 0)
        except (TypeError, ValueError):
            raise ApiError(400, "Invalid request: alternatives parameter is not a number") from None
        if alternatives < 0 or alternatives > settings.alternatives_limit:
            raise ApiError(400, f"Invalid request: alternatives parameter must be between 0 and {settings.alternatives_limit}")
        if source != "auto" and source not in all_langs:
            raise ApiError(400, f"{source} is not supported; sources here: auto, {', '.join(all_langs)}")
        model = choose_model(fields, target)

        documents = [split_html(text) for text in texts] if text_format == "html" else None
        detected = None
        if source == "auto":  # on the text itself, not on the markup around it
            plain = [" ".join(run for translate_it, run in parts if translate_it) for parts in documents] if documents else texts
            detected = [detect_languages(text, all_langs)[0] for text in plain]
            job_source = detect_languages(" ".join(plain), all_langs)[0]["language"]
        else:
            job_source = source

        options: tuple = ()
        if alternatives and text_format == "text":
            beams = max(int(model.decoding.get("num_beams") or 1), alternatives + 1)
            options = (("num_beams", beams), ("num_return_sequences", alternatives + 1))

        if documents is not None:
            runs = [run for parts in documents for translate_it, run in parts if translate_it]
            outputs = await decode(request, model, runs, target, job_source)
            flat = iter(o[0] for o in outputs)
            translated = [join_html(parts, [next(flat) for translate_it, _ in parts if translate_it]) for parts in documents]
            others: list[list[str]] = [[] for _ in texts]
        else:
            outputs = await decode(request, model, texts, target, job_source, options)
            translated = [o[0] for o in outputs]
            others = [list(dict.fromkeys(x for x in o[1:] if x and x != o[0])) for o in outputs]

        reply: dict = {"translatedText": translated if batch else translated[0]}
        if detected is not None:
            reply["detectedLanguage"] = detected if batch else detected[0]
        if alternatives:
            reply["alternatives"] = others if batch else others[0]
        if fields.get("model") is not None or len(translators) > 1:
            reply["model"] = model.name  # swcm's: which model answered
        return reply

    @app.get("/languages")
    async def languages():
        return languages_listing()

    @app.post("/detect")
    async def detect(request: Request):
        fields = await read_fields(request)
        check_api_key(fields)
        texts, _ = texts_of(fields)
        return detect_languages(" ".join(texts), all_langs)

    @app.get("/health")
    async def health():
        if not worker.alive:
            return JSONResponse({"status": "error", "error": "the decoding worker is not running"}, status_code=503)
        return {"status": "ok", "models": list(by_name), "queued_texts": worker.queued_texts, **worker.stats}

    @app.get("/frontend/settings")
    async def frontend_settings():
        first = all_langs[0]
        target = next((t for t in languages_listing()[0]["targets"]), first)
        return {"charLimit": settings.char_limit, "frontendTimeout": 500, "apiKeys": settings.api_key is not None,
                "keyRequired": settings.api_key is not None, "suggestions": False, "filesTranslation": False,
                "supportedFilesFormat": [],
                "language": {"source": {"code": "auto", "name": "Auto Detect"},
                             "target": {"code": target, "name": language_name(target)}}}

    # --- swcm's endpoints ----------------------------------------------------------------------

    @app.get("/models")
    async def list_models():
        return [{**m.describe(), "languages": [{"code": t, "name": language_name(t), "scripts": list(language_scripts(t))}
                                               for t in m.targets]} for m in models]

    @app.post("/generate")
    async def generate(request: Request):
        """Summarisation ({"q": document(s)}) and reading comprehension ({"question", "context"},
        one each or lists of the same length), into language `lang` (or `target`)."""
        fields = await read_fields(request)
        check_api_key(fields)
        target = fields.get("lang") or fields.get("target")
        if not target or not isinstance(target, str):
            raise ApiError(400, "Invalid request: missing lang parameter")
        name = fields.get("model")
        if name is None:
            model = next((m for m in models if m.task != "mt" and target in m.targets), None)
            if model is None:
                raise ApiError(400, f"Invalid request: no summarisation or reading-comprehension model writes {target}")
        elif name not in by_name:
            raise ApiError(400, f"Invalid request: no model named {name!r}; loaded: {', '.join(by_name)}")
        else:
            model = by_name[name]
            if target not in model.targets:
                raise ApiError(400, f"{target} is not supported by model {name!r}: it writes {', '.join(model.targets)}")
        if model.task == "mrc":
            questions, batch = texts_of(fields, "question")
            contexts, _ = texts_of(fields, "context")
            if len(questions) != len(contexts):
                raise ApiError(400, f"Invalid request: {len(questions)} questions but {len(contexts)} contexts")
            separator = pair_separator(model.tokenizer)
            texts = [f"{q}{separator}{c}" for q, c in zip(questions, contexts)]
        else:
            texts, batch = texts_of(fields)
        outputs = await decode(request, model, texts, target, None)
        generated = [o[0] for o in outputs]
        return {"generatedText": generated if batch else generated[0], "model": model.name, "task": model.task}

    # --- the page --------------------------------------------------------------------------------

    static = resources.files("swcm.serving").joinpath("static")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(static.joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


async def _disconnected(request) -> None:
    """Return once the client has closed the connection (the body is read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
