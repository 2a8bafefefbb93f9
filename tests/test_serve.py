"""`swcm serve`'s API in process: LibreTranslate's fields and replies, swcm's additions, the
batching worker and every bad request, on two demo-shaped tiny models (tests/conftest.py)."""

import asyncio
import json

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from swcm.generation import generate_sequences  # noqa: E402
from swcm.languages import detect_languages  # noqa: E402
from swcm.resources import udhr  # noqa: E402
from swcm.script_tokens import dominant_script  # noqa: E402
from swcm.serving.app import create_app  # noqa: E402
from swcm.serving.markup import join_html, split_html  # noqa: E402
from swcm.serving.models import load_served_model  # noqa: E402
from swcm.serving.settings import ServeSettings  # noqa: E402
from swcm.serving.worker import DecodingWorker, Job, QueueFull  # noqa: E402

SENTENCE = udhr("test")[0]["text"]["zh"]
SCRIPTS = {"ug": "Arabic", "kk": "Cyrillic", "mn": "Cyrillic", "bo": "Tibetan"}


@pytest.fixture(scope="module")
def served(demo_shaped_runs):
    return [load_served_model(variant, path, device="cpu", dtype="float32") for variant, path in demo_shaped_runs.items()]


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served)) as client:
        yield client


def direct(model, texts, target, **options):
    """What the model decodes for `texts` outside the server, with the server's default settings."""
    return generate_sequences(model.model, model.tokenizer, texts, target, progress=False,
                              **{**model.decoding, **options})


def test_languages_list_every_language_a_model_reads_or_writes(client, served):
    listing = client.get("/languages").json()
    assert {entry["code"] for entry in listing} == {"zh", "ug", "kk", "mn", "bo"}
    names = {entry["code"]: entry["name"] for entry in listing}
    assert names["ug"] == "Uyghur" and names["bo"] == "Tibetan"
    zh = next(entry for entry in listing if entry["code"] == "zh")
    assert sorted(zh["targets"]) == ["bo", "kk", "mn", "ug"]


def test_translate_json_string_gives_what_the_model_decodes(client, served):
    reply = client.post("/translate", json={"q": SENTENCE, "source": "zh", "target": "ug"})
    assert reply.status_code == 200
    body = reply.json()
    assert body["translatedText"] == direct(served[0], [SENTENCE], "ug")[0][0]
    assert dominant_script(body["translatedText"]) == "Arabic"
    assert "detectedLanguage" not in body and "alternatives" not in body


def test_translate_list_form_and_query_string(client, served):
    texts = [u["text"]["zh"] for u in udhr("test")[:3]]
    expected = [o[0] for o in direct(served[0], texts, "kk")]
    assert client.post("/translate", json={"q": texts, "source": "zh", "target": "kk"}).json()["translatedText"] == expected
    form = client.post("/translate", data={"q": texts[0], "source": "zh", "target": "kk"})
    assert form.json()["translatedText"] == expected[0]
    # deep-translator's shape: every field in the query string of a POST without a body, with an api_key
    query = client.post("/translate", params={"q": texts[1], "source": "auto", "target": "kk", "format": "text",
                                              "api_key": "not-needed"})
    assert query.status_code == 200 and query.json()["translatedText"] == expected[1]
    # an empty string in a list is answered with an empty string
    assert client.post("/translate", json={"q": ["", texts[2]], "source": "zh", "target": "kk"}).json()[
        "translatedText"] == ["", expected[2]]


def test_the_model_field_picks_a_model(client, served):
    ws, random = served
    for model in served:
        reply = client.post("/translate", json={"q": SENTENCE, "source": "zh", "target": "bo", "model": model.name}).json()
        assert reply["translatedText"] == direct(model, [SENTENCE], "bo")[0][0]
        assert reply["model"] == model.name


def test_auto_source_is_detected_per_text(client):
    reply = client.post("/translate", json={"q": SENTENCE, "source": "auto", "target": "mn"}).json()
    assert reply["detectedLanguage"] == {"language": "zh", "confidence": 100.0}
    kazakh = udhr("test")[0]["text"]["kk"]
    batch = client.post("/translate", json={"q": [SENTENCE, kazakh], "source": "auto", "target": "mn"}).json()
    assert [d["language"] for d in batch["detectedLanguage"]] == ["zh", "kk"]


def test_alternatives_are_the_beam_search_n_best(client, served):
    reply = client.post("/translate", json={"q": SENTENCE, "source": "zh", "target": "ug", "alternatives": 2}).json()
    n_best = direct(served[0], [SENTENCE], "ug", num_beams=3, num_return_sequences=3)[0]
    assert reply["translatedText"] == n_best[0]
    assert reply["alternatives"] == list(dict.fromkeys(x for x in n_best[1:] if x and x != n_best[0]))
    assert len(reply["alternatives"]) >= 1


def test_html_keeps_the_markup_and_translates_the_text(client, served):
    document = f'<p class="x">{SENTENCE}<br/><b>人人</b> &amp; <code>人人</code></p>'
    reply = client.post("/translate", json={"q": document, "source": "zh", "target": "ug", "format": "html"}).json()
    parts = split_html(document)
    runs = [text for translate, text in parts if translate]
    assert runs == [SENTENCE, "人人"]  # the code element is kept as it is
    expected = join_html(parts, [o[0] for o in direct(served[0], runs, "ug")])
    assert reply["translatedText"] == expected
    assert expected.startswith('<p class="x">') and "<code>人人</code></p>" in expected and "&amp;" in expected


def test_detect_is_honest_where_the_script_does_not_decide(client):
    assert client.post("/detect", data={"q": SENTENCE}).json()[0] == {"language": "zh", "confidence": 100.0}
    mongolian = udhr("test")[0]["text"]["mn"]
    ranked = client.post("/detect", json={"q": mongolian}).json()
    assert {d["language"]: d["confidence"] for d in ranked[:2]} == {"kk": 50.0, "mn": 50.0}
    kazakh = udhr("test")[0]["text"]["kk"]  # has letters Mongolian Cyrillic lacks
    assert client.post("/detect", json={"q": kazakh}).json()[0] == {"language": "kk", "confidence": 100.0}
    # Dzongkha and Tibetan share the Tibetan script: neither wins
    tibetan = udhr("test")[0]["text"]["bo"]
    assert detect_languages(tibetan, ["zh", "dz", "bo"])[:2] == [{"language": "dz", "confidence": 50.0},
                                                                  {"language": "bo", "confidence": 50.0}]


def test_models_report_variant_task_languages_and_measured_scores(client, demo_shaped_runs):
    listing = {m["name"]: m for m in client.get("/models").json()}
    assert set(listing) == {"ws", "random"}
    for variant, path in demo_shaped_runs.items():
        model = listing[variant]
        assert model["variant"] == variant and model["task"] == "mt"
        assert {lang["code"] for lang in model["languages"]} == {"zh", "ug", "kk", "mn", "bo"}
        results = json.loads((path.parent.parent / "eval" / "results.json").read_text(encoding="utf-8"))
        for row in results["rows"]:
            assert model["scores"]["test"]["languages"][row["lang"]]["chrf"] == row["chrf"]
        evals = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines() if "eval_loss" in line]
        best = min(evals, key=lambda r: r["eval_loss"])
        assert model["scores"]["validation"] == {"step": best["step"], "chrf": best["eval_chrf"],
                                                 "rougeL_f": best["eval_rougeL_f"], "loss": best["eval_loss"]}
        assert model["decoding"]["max_new_tokens"] == results["generation"]["max_new_tokens"]


def test_health_and_the_page(client):
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    assert "https://" not in page.text  # everything the page needs comes from the server
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200


@pytest.mark.parametrize("request_args, status, message", [
    ({"json": {"source": "zh", "target": "ug"}}, 400, "missing q"),
    ({"json": {"q": "", "source": "zh", "target": "ug"}}, 400, "missing q"),
    ({"json": {"q": [], "source": "zh", "target": "ug"}}, 400, "missing q"),
    ({"json": {"q": "人", "source": "zh"}}, 400, "missing target"),
    ({"json": {"q": "人", "source": "zh", "target": "fr"}}, 400, "fr is not supported"),
    ({"json": {"q": "人", "source": "xx", "target": "ug"}}, 400, "xx is not supported"),
    ({"json": {"q": "人", "source": "zh", "target": "ug", "model": "nope"}}, 400, "no model named 'nope'"),
    ({"json": {"q": "人", "source": "zh", "target": "ug", "format": "pdf"}}, 400, "pdf format is not supported"),
    ({"json": {"q": "人", "source": "zh", "target": "ug", "alternatives": "many"}}, 400, "alternatives"),
    ({"json": {"q": "人", "source": "zh", "target": "ug", "alternatives": 99}}, 400, "alternatives"),
    ({"json": {"q": [1, 2], "source": "zh", "target": "ug"}}, 400, "list of strings"),
    ({"json": {"q": "人" * (1 << 20), "source": "zh", "target": "ug"}}, 400, "exceeds text limit (2000 characters"),
    ({"json": {"q": ["人"] * 10_000, "source": "zh", "target": "ug"}}, 400, "(10000 texts) exceeds text limit"),
    ({"content": '{"q": "人", "source": '.encode(), "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
    ({"content": b'["q"]', "headers": {"content-type": "application/json"}}, 400, "a JSON object is expected"),
    ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 400, "not UTF-8"),
])
def test_bad_requests_get_one_clear_line(client, request_args, status, message):
    reply = client.post("/translate", **request_args)
    assert reply.status_code == status
    body = reply.json()
    assert list(body) == ["error"] and message in body["error"] and "\n" not in body["error"]
    assert client.get("/health").json()["status"] == "ok"  # nothing broke


def test_a_model_that_cannot_write_the_target(served):
    ws, random = served
    narrow = type(random)(**{**random.__dict__, "name": "narrow", "targets": ["ug"]})
    with TestClient(create_app([narrow, ws])) as client:
        reply = client.post("/translate", json={"q": "人", "source": "zh", "target": "kk", "model": "narrow"})
        assert reply.status_code == 400 and reply.json() == {"error": "kk is not supported by model 'narrow': it writes ug"}
        # without a model field, the first model that writes the target answers
        assert client.post("/translate", json={"q": "人", "source": "zh", "target": "kk"}).json()["model"] == "ws"
    assert TestClient(create_app([ws])).get("/nowhere").json() == {"error": "Not Found"}


def test_api_key_and_cors(served):
    settings = ServeSettings(api_key="secret", cors_origins=["http://example.org"])
    with TestClient(create_app(served[:1], settings)) as client:
        assert client.post("/translate", json={"q": "人", "source": "zh", "target": "ug"}).status_code == 403
        wrong = client.post("/translate", json={"q": "人", "source": "zh", "target": "ug", "api_key": "x"})
        assert wrong.status_code == 403 and wrong.json() == {"error": "Invalid API key"}
        right = client.post("/translate", data={"q": "人", "source": "zh", "target": "ug", "api_key": "secret"})
        assert right.status_code == 200
        assert client.get("/languages").status_code == 200  # listing needs no key
        preflight = client.options("/translate", headers={"Origin": "http://example.org",
                                                          "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "http://example.org"
    with TestClient(create_app(served[:1])) as client:  # no CORS unless asked for
        reply = client.get("/languages", headers={"Origin": "http://example.org"})
        assert "access-control-allow-origin" not in reply.headers


def test_the_worker_batches_jobs_of_one_kind_and_keeps_each_its_outputs(served):
    ws = served[0]
    texts = [u["text"]["zh"] for u in udhr("test")[:6]]
    worker = DecodingWorker(batch_size=4, max_wait=0.0, max_queued=64)
    jobs = [Job(ws, [t], "ug") for t in texts] + [Job(ws, texts[:2], "bo"), Job(ws, [texts[2]], "ug", options=(("num_beams", 2),))]
    futures = [worker.submit(job) for job in jobs]  # all queued before the worker starts
    worker.start()
    results = [f.result() for f in futures]
    worker.stop()
    ug = direct(ws, texts, "ug")
    assert results[:6] == [[o] for o in ug]
    assert results[6] == direct(ws, texts[:2], "bo")
    assert results[7] == direct(ws, [texts[2]], "ug", num_beams=2)
    # six ug texts in batches of 4, the bo job, the beam-search job
    assert worker.stats["batches"] == 4 and worker.stats["texts"] == 9


def test_a_full_queue_answers_429_and_nothing_breaks(served):
    app = create_app(served[:1], ServeSettings(queue_size=2, batch_limit=2))
    worker = app.state.worker

    async def scenario():
        transport = httpx.ASGITransport(app=app)  # no lifespan: the worker starts when the test says
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            first = asyncio.ensure_future(client.post("/translate", json={"q": [SENTENCE, SENTENCE], "source": "zh", "target": "ug"}))
            while worker.queued_texts < 2:
                await asyncio.sleep(0.01)
            refused = await client.post("/translate", json={"q": SENTENCE, "source": "zh", "target": "ug"})
            health = await client.get("/health")  # the worker has not started: not healthy yet
            worker.start()
            return refused, health, await first

    refused, health, first = asyncio.run(scenario())
    worker.stop()
    assert refused.status_code == 429 and refused.json()["error"].startswith("Slowdown: the decoding queue is full")
    assert health.status_code == 503
    assert first.status_code == 200 and len(first.json()["translatedText"]) == 2


def test_queue_full_and_stop_in_the_worker(served):
    worker = DecodingWorker(batch_size=2, max_wait=0.0, max_queued=3)
    first = worker.submit(Job(served[0], [SENTENCE, SENTENCE], "ug"))
    with pytest.raises(QueueFull):
        worker.submit(Job(served[0], [SENTENCE, SENTENCE], "ug"))
    cancelled = worker.submit(Job(served[0], [SENTENCE], "kk"))
    cancelled.cancel()
    worker.start()
    worker.stop(finish=True)  # finishes what is queued
    assert len(first.result()) == 2 and cancelled.cancelled()
    assert worker.stats["texts"] == 2


def test_split_html_round_trips_markup():
    document = '<!doctype html><div id="a">Hello <i>world</i>!<script>var x = "<b>";</script><!-- c --></div>'
    parts = split_html(document)
    assert [t for translate, t in parts if translate] == ["Hello", "world"]
    assert join_html(parts, ["Hello", "world"]) == document


def test_the_demo_report_ends_with_the_command_that_serves_its_models(demo_shaped_runs):
    from swcm.experiments.demo import serve_markdown
    from swcm.serving.server import parse_model_args

    results = [{"spec": {"variant": v}, "model": str(path)} for v, path in demo_shaped_runs.items()]
    section = serve_markdown(results)
    command = section.strip().splitlines()[-1].strip()
    assert command == f"swcm serve ws={demo_shaped_runs['ws']} random={demo_shaped_runs['random']}"
    assert parse_model_args(command.split()[2:]) == [("ws", demo_shaped_runs["ws"]), ("random", demo_shaped_runs["random"])]


def test_summarisation_and_reading_comprehension_models_have_their_own_endpoint(served):
    import dataclasses

    from swcm.data.examples import pair_separator

    ws = served[0]
    summariser = dataclasses.replace(ws, name="sum", task="sum")
    reader = dataclasses.replace(ws, name="mrc", task="mrc")
    document, question = udhr("test")[1]["text"]["bo"], udhr("test")[2]["text"]["bo"]
    with TestClient(create_app([ws, summariser, reader])) as client:
        reply = client.post("/generate", json={"q": document, "lang": "bo", "model": "sum"}).json()
        assert reply == {"generatedText": direct(ws, [document], "bo")[0][0], "model": "sum", "task": "sum"}
        answer = client.post("/generate", json={"question": [question], "context": [document], "lang": "bo",
                                                "model": "mrc"}).json()
        joined = f"{question}{pair_separator(ws.tokenizer)}{document}"
        assert answer["generatedText"] == [direct(ws, [joined], "bo")[0][0]] and answer["task"] == "mrc"
        refused = client.post("/translate", json={"q": "人", "source": "zh", "target": "bo", "model": "sum"})
        assert refused.status_code == 400 and "use POST /generate" in refused.json()["error"]
        missing = client.post("/generate", json={"question": "x", "lang": "bo", "model": "mrc"})
        assert missing.status_code == 400 and missing.json() == {"error": "Invalid request: missing context parameter"}
        listed = {m["name"]: m["task"] for m in client.get("/models").json()}
        assert listed == {"ws": "mt", "sum": "sum", "mrc": "mrc"}
