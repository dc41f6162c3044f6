"""``geo-os pixel-llm serve`` as a real process on 127.0.0.1: captions equal the CLI's, concurrent
clients are batched and each gets its own result, hostile uploads are refused with one-line 4xx
errors while the server keeps serving with bounded memory, system calls, token, graceful drain."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

sys.path.insert(0, str(Path(__file__).parent))
from serve_support import ServerProcess, image_bytes, make_checkpoint, write_images  # noqa: E402

N_IMAGES = 32


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    make_checkpoint(root / "ck")
    write_images(root / "images", N_IMAGES)
    return root


@pytest.fixture(scope="module")
def server(workspace):
    process = ServerProcess(workspace / "ck", workspace / "logs", "--max-upload-bytes", "2000000", "--max-images", "16")
    yield process
    process.close()


def cli_captions(workspace: Path, paths: list[Path], *flags: str) -> list[dict]:
    """What ``geo-os pixel-llm caption --json`` prints for ``paths``."""
    from click.testing import CliRunner

    from geometry_os.cli import cli

    result = CliRunner().invoke(
        cli, ["pixel-llm", "caption", *map(str, paths), "--checkpoint", str(workspace / "ck"), "--json", *flags]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def post_files(server: ServerProcess, contents: list[tuple[str, bytes]], options: dict | None = None) -> httpx.Response:
    files = [("image", (name, data, "image/png")) for name, data in contents]
    data = {"options": json.dumps(options)} if options is not None else None
    return httpx.post(server.url + "/v1/captions", files=files, data=data, timeout=60)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(selector) + r"\}" if labels else "") + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# ---- captions equal the CLI's ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, options",
    [
        ((), {}),
        (("--num-beams", "3"), {"num_beams": 3}),
        (("--strategy", "sample", "--top-p", "0.9", "--seed", "1"), {"do_sample": True, "top_p": 0.9, "seed": 1}),
        (("--max-length", "6", "--no-repeat-ngram-size", "2"), {"max_length": 6, "no_repeat_ngram_size": 2}),
    ],
)
def test_captions_equal_the_cli(workspace, server, flags, options):
    paths = sorted((workspace / "images").glob("*.png"))[:5]
    expected = cli_captions(workspace, paths, *flags)
    response = post_files(server, [(p.name, p.read_bytes()) for p in paths], options)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["image"] for r in results] == [p.name for p in paths]
    assert [r["caption"] for r in results] == [e["caption"] for e in expected]
    assert [r["score"] for r in results] == pytest.approx([e["score"] for e in expected], abs=1e-4)
    as_json = httpx.post(
        server.url + "/v1/captions",
        timeout=60,
        json={
            "images": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths],
            "options": options,
        },
    )
    assert as_json.status_code == 200 and as_json.json()["results"] == results


def test_token_ids_scores_and_return_sequences(server):
    response = post_files(
        server,
        [("a.png", image_bytes(1))],
        {"num_beams": 3, "num_return_sequences": 2, "return_token_ids": True, "output_scores": True},
    )
    row = response.json()["results"][0]
    assert response.status_code == 200 and len(row["sequences"]) == 2
    assert row["token_ids"][0] == 1 and len(row["token_scores"]) == len(row["token_ids"]) - 1
    assert sum(row["token_scores"]) == pytest.approx(row["score"], abs=1e-4)
    assert set(response.json()["timings"]) >= {"queue_ms", "decode_ms", "total_ms", "batch_images", "batch_requests"}


def test_rerank_score_comes_with_reranked_captions(server):
    reranked = post_files(server, [("a.png", image_bytes(1))], {"num_beams": 3, "rerank": "word_dropout"})
    row = reranked.json()["results"][0]
    assert reranked.status_code == 200 and isinstance(row["rerank_score"], float) and row["rerank_score"] <= 0
    plain = post_files(server, [("a.png", image_bytes(1))], {"num_beams": 3}).json()["results"][0]
    assert "rerank_score" not in plain


# ---- dynamic batching under load --------------------------------------------------------------------


@pytest.mark.slow
def test_64_concurrent_clients_get_their_own_captions_batched(workspace, server):
    paths = sorted((workspace / "images").glob("*.png"))
    expected = [row["caption"] for row in cli_captions(workspace, paths)]
    assert len(set(expected)) >= N_IMAGES * 3 // 4, "the test images must get mostly different captions"
    before = httpx.get(server.url + "/metrics").text

    async def client(c: int, http: httpx.AsyncClient) -> list[tuple[int, int, str]]:
        out = []
        for r in range(8):
            index = (c * 8 + r * 5) % N_IMAGES
            response = await http.post(
                "/v1/captions", files=[("image", (f"{c}-{r}.png", paths[index].read_bytes(), "image/png"))]
            )
            row = response.json()["results"][0] if response.status_code == 200 else {"caption": response.text}
            assert row.get("image", f"{c}-{r}.png") == f"{c}-{r}.png"
            out.append((index, response.status_code, row["caption"]))
        return out

    async def main() -> list[tuple[int, int, str]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as http:
            rows = await asyncio.gather(*(client(c, http) for c in range(64)))
        return [row for rows_ in rows for row in rows_]

    rows = asyncio.run(main())
    assert len(rows) == 512
    assert [status for _, status, _ in rows] == [200] * 512
    assert [caption for _, _, caption in rows] == [expected[index] for index, _, _ in rows]
    after = httpx.get(server.url + "/metrics").text
    batches = metric(after, "pixel_llm_batch_requests_count") - metric(before, "pixel_llm_batch_requests_count")
    single = metric(after, "pixel_llm_batch_requests_bucket", le="1") - metric(
        before, "pixel_llm_batch_requests_bucket", le="1"
    )
    assert batches < 512 and single < batches, "some model calls must have served more than one request"
    ok = "pixel_llm_requests_total", {"method": "POST", "route": "/v1/captions", "status": "200"}
    assert metric(after, ok[0], **ok[1]) - metric(before, ok[0], **ok[1]) == 512
    assert 'status="5' not in after


# ---- hostile uploads ----------------------------------------------------------------------------------


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` zeros, compressed to a few tens of KB
    (built row by row: the decoded image never exists here)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 500) for _ in range(height // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def assert_refused(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and message
    for needle in needles:
        assert needle in message, message


def raw_request(server: ServerProcess, head: bytes, body_chunks, chunk_delay: float = 0.0) -> tuple[int, bytes]:
    """Send ``head`` then body chunks until the server answers or closes; return (status, reply)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for piece in body_chunks:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-body: the answer is already waiting
        sock.settimeout(30)
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 10:
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        except (TimeoutError, ConnectionResetError):
            pass
    return int(reply.split(b" ", 2)[1]), reply


def test_hostile_uploads_are_refused_and_the_server_keeps_serving(server):
    good = image_bytes(3)
    rss_before = server.rss_bytes()
    cases = [
        (post_files(server, [("cut.png", good[: len(good) // 2])]), 422, "image 0 ('cut.png')"),
        (post_files(server, [("ok.png", good), ("empty.jpg", b"")]), 422, "image 1 ('empty.jpg')", "cannot identify"),
        (post_files(server, [("text.jpg", b"hello, I am not a JPEG\n" * 20)]), 422, "image 0 ('text.jpg')"),
        (
            post_files(server, [("bomb.png", png_bomb())]),
            422,
            "image 0 ('bomb.png')",
            "400000000",
            "decompression bomb",
        ),
        (post_files(server, [(f"{i}.png", image_bytes(i, size=4)) for i in range(1000)]), 413, "too many images", "16"),
        (
            httpx.post(
                server.url + "/v1/captions",
                content=b"--x\r\nnonsense",
                timeout=30,
                headers={"Content-Type": "multipart/form-data"},
            ),
            400,
            "multipart",
        ),
        (httpx.post(server.url + "/v1/captions", json={"images": 5}), 400, "images"),
        (httpx.post(server.url + "/v1/captions", json={"images": [5]}), 400, "images.0"),
        (httpx.post(server.url + "/v1/captions", json=[1, 2]), 400, "expected an object"),
        (httpx.post(server.url + "/v1/captions", json={"images": ["!!"]}), 400, "images[0]: not valid base64"),
        (httpx.post(server.url + "/v1/captions", json={"images": [{"url": "http://example.com/a.png"}]}), 400, "url"),
        (
            httpx.post(server.url + "/v1/captions", content=b"{nope", headers={"Content-Type": "application/json"}),
            400,
            "malformed JSON",
        ),
        (post_files(server, [("a.png", good)], {"num_beams": "many"}), 400, "options: num_beams"),
        (post_files(server, [("a.png", good)], {"nucleus": 0.9}), 400, "options: nucleus"),
        (post_files(server, [("a.png", good)], {"strategy": "nope"}), 400, "unknown decoding_strategy 'nope'"),
        (post_files(server, [("a.png", good)], {"num_beams": 99}), 400, "--max-num-beams"),
        (post_files(server, [("a.png", good)], {"explain": "yes"}), 400, "options.explain"),
        (
            httpx.post(server.url + "/v1/captions", content=b"x", headers={"Content-Type": "text/plain"}),
            415,
            "text/plain",
        ),
    ]
    for response, status, *needles in cases:
        assert_refused(response, status, *needles)

    big = 200 * 1024 * 1024
    head = (
        f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n"
    ).encode()
    status, reply = raw_request(server, head, (b"0" * 65536 for _ in range(64)))
    assert status == 413 and b"--max-upload-bytes" in reply
    chunked = (
        b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"10000\r\n" + b"0" * 65536 + b"\r\n"
    status, reply = raw_request(server, chunked, (piece for _ in range(big // 65536)))
    assert status == 413 and b"--max-upload-bytes" in reply

    assert post_files(server, [("ok.png", good)]).status_code == 200
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert server.rss_bytes() < rss_before + 150 * 1024 * 1024, "memory must stay bounded"
    assert server.process.poll() is None


# ---- the rest of the API -------------------------------------------------------------------------------


def test_health_metrics_page_and_access_log(server):
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "pixel_llm_requests_total",
        "pixel_llm_request_duration_seconds_bucket",
        "pixel_llm_batch_images_bucket",
        "pixel_llm_errors_total",
        "pixel_llm_queue_images",
    ):
        assert f"# TYPE {name.removesuffix('_bucket')} " in metrics.text or name in metrics.text
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and '<input type="file"' in page.text and "/v1/captions" in page.text
    assert_refused(httpx.get(server.url + "/nope"), 404, "/nope")
    assert_refused(httpx.get(server.url + "/v1/captions"), 405)
    lines = [json.loads(line) for line in server.access_log().splitlines()]
    assert {"time", "client", "method", "path", "status", "bytes", "duration_ms"} <= set(lines[-1])
    assert any(line["path"] == "/nope" and line["status"] == 404 for line in lines)


def test_system_calls_over_http(server):
    info = httpx.post(server.url + "/v1/calls/pixel_llm.info", json={"preset": "tiny"}, timeout=60)
    assert info.status_code == 200 and info.json()["result"]["parameters"]["total"] > 0
    assert [c["name"] for c in httpx.get(server.url + "/v1/calls").json()["calls"]] == ["pixel_llm.info"]
    assert_refused(httpx.post(server.url + "/v1/calls/pixel_llm.info", json={"config": "/etc/passwd"}), 400, "config")
    assert_refused(httpx.post(server.url + "/v1/calls/pixel_llm.info", json={"preset": 3}), 400, "preset")
    assert_refused(httpx.post(server.url + "/v1/calls/pixel_llm.info", json={"preset": "huge"}), 400, "huge")
    assert_refused(httpx.post(server.url + "/v1/calls/pixel_llm.caption", json={}), 403, "not offered")
    assert_refused(httpx.post(server.url + "/v1/calls/pixel_llm.train", json={}), 403, "--allow-train")
    assert_refused(
        httpx.post(server.url + "/v1/calls/nope", json={}), 404, "unknown system call 'nope'", "pixel_llm.info"
    )


@pytest.mark.slow
def test_bearer_token_and_graceful_drain(workspace):
    server = ServerProcess(
        workspace / "ck", workspace / "logs", "--max-wait-ms", "2000", env={"GEO_OS_SERVE_TOKEN": "s3cret"}
    )
    try:
        files = [("image", ("a.png", image_bytes(0), "image/png"))]
        assert_refused(httpx.post(server.url + "/v1/captions", files=files), 401, "bearer token")
        assert_refused(httpx.get(server.url + "/metrics"), 401, "bearer token")
        assert httpx.get(server.url + "/healthz").status_code == 200
        auth = {"Authorization": "Bearer s3cret"}
        slow: dict[str, httpx.Response] = {}
        # the batcher waits --max-wait-ms for company: this request is in flight for ~2 s
        worker = threading.Thread(
            target=lambda: slow.setdefault(
                "r", httpx.post(server.url + "/v1/captions", files=files, headers=auth, timeout=60)
            )
        )
        worker.start()
        time.sleep(0.7)
        server.terminate()
        time.sleep(0.3)
        assert_refused(httpx.post(server.url + "/v1/captions", files=files, headers=auth), 503, "shutting down")
        assert httpx.get(server.url + "/readyz").status_code == 503
        worker.join(30)
        assert slow["r"].status_code == 200 and slow["r"].json()["results"][0]["caption"]
        server.process.wait(timeout=30)
    finally:
        server.close()


def test_missing_web_stack_is_one_line(monkeypatch, tmp_path):
    import importlib.util

    from click.testing import CliRunner

    from geometry_os.cli import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = CliRunner().invoke(cli, ["pixel-llm", "serve", "--checkpoint", str(tmp_path)])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        "Error: serve needs the web stack (uvicorn missing): pip install 'geometry-os[serve]'"
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--port", "70000"), "Error: --port: Input should be less than or equal to 65535 (got 70000)"),
        (("--max-batch-size", "0"), "Error: --max-batch-size: Input should be greater than or equal to 1 (got 0)"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(tmp_path, flags, message):
    from click.testing import CliRunner

    from geometry_os.cli import cli

    result = CliRunner().invoke(cli, ["pixel-llm", "serve", "--checkpoint", str(tmp_path), *flags])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [message]


def test_the_plugin_imports_no_web_stack():
    code = (
        "import sys; from geometry_os.cli import cli\n"
        "try:\n    cli.main(['pixel-llm', 'serve', '--help'], standalone_mode=False)\nfinally:\n"
        "    print(sorted(m for m in ('starlette', 'uvicorn', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--max-batch-size" in out.stdout and out.stdout.strip().endswith("[]")


@pytest.mark.slow
def test_full_queue_is_429_and_a_slow_request_504(workspace):
    # the batcher holds a request for --max-wait-ms 1500 hoping for company: longer than the 1 s
    # timeout; --max-queue 1 leaves no room for a request of two images
    server = ServerProcess(
        workspace / "ck", workspace / "logs", "--max-wait-ms", "1500", "--max-queue", "1", "--request-timeout", "1"
    )
    try:
        two = [("image", (f"{i}.png", image_bytes(i), "image/png")) for i in range(2)]
        assert_refused(
            httpx.post(server.url + "/v1/captions", files=two, timeout=60), 429, "queue is full", "--max-queue"
        )
        assert_refused(httpx.post(server.url + "/v1/captions", files=two[:1], timeout=60), 504, "--request-timeout")
        time.sleep(1.0)  # the worker skips the job that timed out
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert "pixel_llm_queue_images 0" in httpx.get(server.url + "/metrics").text
    finally:
        server.close()


def test_the_batcher_thread_decodes_with_the_host_it_was_made_under(monkeypatch):
    """The worker thread runs in its creator's context: the host active there (``create_app`` activates the
    one it is given) is the one ``get_host()`` returns while decoding, not the process-wide host."""
    from geometry_os.host import Host, get_host
    from geometry_os.plugins.serve import batcher as batcher_module
    from geometry_os.plugins.serve.metrics import Metrics

    seen = []
    monkeypatch.setattr(batcher_module.Batcher, "_run", lambda self: seen.append(get_host()))
    host = Host(entry_points=False)
    assert host is not get_host()
    with host.active():
        batcher = batcher_module.Batcher(None, None, Metrics(), 1, 1.0, 1)
    batcher._thread.join(5)
    assert seen == [host]
