"""`swcm serve` as a process on loopback: real LibreTranslate clients, and the bad input that must
get one clear line without breaking anything (a port in use, a client that disconnects
mid-request, SIGTERM or Ctrl-C while decoding). A directory that is not a model, and the other bad
command lines: tests/test_bad_input.py."""

import json
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from swcm.generation import generate_sequences, load_generator  # noqa: E402
from swcm.resources import udhr  # noqa: E402
from swcm.script_tokens import dominant_script  # noqa: E402

SENTENCE = udhr("test")[0]["text"]["zh"]
# one text decoded at a time, so that a long request stays in flight while the test acts on it
SLOW = ["--batch-size", "1", "--batch-limit", "2000", "--queue-size", "4000"]


@pytest.fixture(scope="module")
def server(demo_shaped_runs, start_server):
    process, url = start_server(f"ws={demo_shaped_runs['ws']}", f"random={demo_shaped_runs['random']}", *SLOW)
    yield url
    process.terminate()
    process.wait(timeout=60)


def get_json(url):
    with urllib.request.urlopen(url, timeout=60) as reply:
        return json.loads(reply.read())


def post_json(url, body, timeout=120):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return reply.status, json.loads(reply.read())


def measured_decoding(path):
    """The decoding settings the server takes from the model's results.json."""
    results = json.loads((path.parent.parent / "eval" / "results.json").read_text(encoding="utf-8"))
    return {key: results["generation"][key] for key in ("max_new_tokens",)}


def test_libretranslatepy_translates_zh_to_ug(server, demo_shaped_runs):
    from libretranslatepy import LibreTranslateAPI

    client = LibreTranslateAPI(server)  # posts a form body
    translated = client.translate(SENTENCE, "zh", "ug")
    model, tokenizer = load_generator(demo_shaped_runs["ws"], "cpu", "float32", "fast")
    expected = generate_sequences(model, tokenizer, [SENTENCE], "ug", progress=False,
                                  **measured_decoding(demo_shaped_runs["ws"]))[0][0]
    assert translated == expected and dominant_script(translated) == "Arabic"
    codes = {entry["code"] for entry in client.languages()}
    assert {"zh", "ug", "kk", "mn", "bo"} <= codes
    assert client.detect(SENTENCE)[0]["language"] == "zh"


def test_a_deep_translator_shaped_request(server):
    # deep-translator's LibreTranslator: requests.post(url + "translate", params={q, source, target, format, api_key})
    query = urllib.parse.urlencode({"q": SENTENCE, "source": "auto", "target": "kk", "format": "text",
                                    "api_key": "a-key-this-server-does-not-need"})
    request = urllib.request.Request(f"{server}/translate?{query}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=60) as reply:
        body = json.loads(reply.read())
    assert dominant_script(body["translatedText"]) == "Cyrillic"
    assert body["detectedLanguage"] == {"language": "zh", "confidence": 100.0}


def wait_for(server, condition):
    """Poll /health until `condition(health)` holds; returns that health."""
    while True:
        health = get_json(f"{server}/health")
        if condition(health):
            return health
        time.sleep(0.02)


def test_a_client_that_disconnects_mid_request_cancels_it(server):
    before = get_json(f"{server}/health")
    texts = [SENTENCE] * 2000
    body = json.dumps({"q": texts, "source": "zh", "target": "mn"}).encode()
    host, port = server.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for(server, lambda h: h["texts"] > before["texts"])  # decoding has begun
    health = wait_for(server, lambda h: h["queued_texts"] == 0 and h["decoding"] == 0)
    assert health["cancelled"] == before["cancelled"] + 1
    assert health["texts"] - before["texts"] < len(texts)  # the rest was never decoded
    status, reply = post_json(f"{server}/translate", {"q": SENTENCE, "source": "zh", "target": "ug"})
    assert status == 200 and dominant_script(reply["translatedText"]) == "Arabic"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stopping_while_decoding_answers_the_request_in_hand_and_exits_0(demo_shaped_runs, start_server, stop):
    process, url = start_server(demo_shaped_runs["ws"], *SLOW)
    texts = [u["text"]["zh"] for u in udhr("test")] * 8
    answer = {}

    def ask():
        answer["reply"] = post_json(f"{url}/translate", {"q": texts, "source": "zh", "target": "ug"})

    asking = threading.Thread(target=ask)
    asking.start()
    wait_for(url, lambda h: h["texts"] > 0)
    process.send_signal(stop)
    asking.join(timeout=300)
    assert process.wait(timeout=300) == 0
    status, reply = answer["reply"]
    assert status == 200 and len(reply["translatedText"]) == len(texts)
    assert all(dominant_script(t) == "Arabic" for t in reply["translatedText"])
    assert "Traceback" not in process.stderr.read()


def test_a_port_in_use_is_one_line(demo_shaped_runs, capsys):
    from swcm.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capsys.readouterr()
        assert main(["serve", str(demo_shaped_runs["ws"]), "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"swcm serve: error: 127.0.0.1:{port}: already in use; choose another port with --port"]
