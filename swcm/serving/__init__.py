"""`swcm serve`: a trained model behind LibreTranslate's HTTP API, with a try-it page.

A recipe over `swcm.generation` / `swcm.fast_generation`: `models` loads each model once with
`load_generator` and reads its measured scores; `worker` is the one thread that decodes,
batching concurrent requests; `app` is the FastAPI application (the API and the page, whose
files are in `static/`); `server` binds the port and runs uvicorn until SIGTERM or Ctrl-C.
FastAPI and uvicorn come with the `serve` extra: pip install "swcm[serve]".
"""
