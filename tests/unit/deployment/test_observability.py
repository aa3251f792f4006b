"""Request ids, logs and metrics of the front end, without a server (the chaos tests read them from real processes)."""

from __future__ import annotations

import json
import logging

from fastapi.testclient import TestClient

from frontend.config import Settings
from frontend.main import create_app
from frontend.observability import REQUEST_ID_HEADER, JsonFormatter, RequestIdFilter, request_id_var


def client() -> TestClient:
    return TestClient(create_app(Settings()))  # no lifespan: no Triton client, no task store


def test_every_answer_carries_a_request_id_and_a_plain_client_id_is_kept():
    api = client()
    generated = api.get("/livez")
    assert generated.status_code == 200 and len(generated.headers[REQUEST_ID_HEADER]) == 32
    assert api.get("/livez", headers={REQUEST_ID_HEADER: "trace-42.a:b"}).headers[REQUEST_ID_HEADER] == "trace-42.a:b"
    # anything else (it would end up in log lines) is replaced
    for hostile in ("x" * 129, "a b", "<script>", "id\tsplit"):
        assert api.get("/livez", headers={REQUEST_ID_HEADER: hostile}).headers[REQUEST_ID_HEADER] != hostile
    # error answers too, the unknown route's 404 included
    missing = api.get("/no/such/route")
    assert missing.status_code == 404 and missing.headers[REQUEST_ID_HEADER]


def test_readyz_is_503_without_triton_and_metrics_count_by_route_template():
    api = client()
    ready = api.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready" and ready.headers["retry-after"]
    # outside the lifespan (no sessions registry yet) a session route is a 503, not a crash
    assert api.delete("/api/infer_stream_close/some-session-id").status_code == 503
    metrics = api.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    # the route template, not the path: one series however many session ids there are
    assert 'route="/api/infer_stream_close/{session_id}"' in metrics.text and "some-session-id" not in metrics.text
    assert 'emoserve_http_requests_total{method="GET",route="/readyz",status="503"}' in metrics.text


def test_json_log_lines_name_the_request():
    record = logging.LogRecord("frontend.x", logging.WARNING, __file__, 1, "model %s down", ("lam_a2e",), None)
    token = request_id_var.set("req-7")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "model lam_a2e down" and line["request_id"] == "req-7" and line["level"] == "WARNING"
    assert line["time"].endswith("Z")


def test_an_unexpected_exception_is_a_json_500_naming_only_the_request_id(caplog):
    from frontend.errors import ERROR_FIELD_TAG

    app = create_app(Settings())

    async def broken():
        raise RuntimeError("secret /srv/internal/path")

    app.add_api_route("/broken", broken, methods=["GET"])
    app.add_api_route("/broken-llama", broken, methods=["GET"], tags=[ERROR_FIELD_TAG])
    api = TestClient(app, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR):
        answer = api.get("/broken", headers={REQUEST_ID_HEADER: "req-500"})
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {"detail": "internal error: the server log has the details under request id req-500"}
    assert answer.headers[REQUEST_ID_HEADER] == "req-500" and "/srv" not in answer.text
    assert "secret /srv/internal/path" in caplog.text  # the log has what the answer does not
    llama = api.get("/broken-llama").json()
    assert set(llama) == {"error", "code", "details"} and llama["code"] == 500


def test_browsers_from_other_origins_cannot_post_and_allowed_ones_get_cors_headers():
    api = TestClient(create_app(Settings(cors_origins=["https://app.example.com"])))
    foreign = api.post("/process_video", json={"video_path": "x", "question": "hi"}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "https://evil.example" in foreign.json()["detail"]
    allowed = api.options("/process_video", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    # the server's own pages, and clients that are no browsers, are not affected
    same = api.post("/api/infer_stream_init", json={}, headers={"Origin": "http://testserver"})
    assert same.status_code != 403
    assert api.post("/api/infer_stream_init", json={}).status_code != 403
    assert api.get("/livez", headers={"Origin": "https://evil.example"}).status_code == 200


def test_rate_limit_per_client_in_each_apis_format_with_probes_exempt():
    api = TestClient(create_app(Settings(rate_limit="3/minute")))
    assert all(api.get("/livez").status_code == 200 for _ in range(10))  # probes are not counted
    statuses = [api.post("/api/infer_stream_init", json={}).status_code for _ in range(3)]
    assert 429 not in statuses
    limited = api.post("/api/infer_stream_init", json={})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert set(limited.json()) == {"detail"} and "rate limit exceeded" in limited.json()["detail"]
    llama = api.post("/process_video", json={"video_path": "x", "question": "hi"})
    assert llama.status_code == 429 and set(llama.json()) == {"error", "code", "details"}
    hallo2 = api.get("/api/v1/tasks")
    assert hallo2.status_code == 429 and hallo2.json()["error_code"] == "RATE_LIMITED"
    # another API key is another client, with its own budget
    assert api.post("/api/infer_stream_init", json={}, headers={"X-API-Key": "someone-else"}).status_code != 429


def test_one_client_cannot_hold_more_than_its_share_of_requests_in_flight():
    import asyncio

    import httpx

    app = create_app(Settings(max_requests_per_client=2))
    release = asyncio.Event()

    async def slow():
        await release.wait()
        return {"ok": True}

    app.add_api_route("/slow", slow, methods=["GET"])

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
            await asyncio.sleep(0.2)
            refused = await client.get("/slow")
            other = asyncio.create_task(client.get("/slow", headers={"X-API-Key": "another-client"}))
            probe = await client.get("/livez")  # not counted
            release.set()
            answers = [await task for task in held] + [await other]
            after = await client.get("/slow")
        return refused, probe, answers, after

    refused, probe, answers, after = asyncio.run(main())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1" and "2 requests in flight" in refused.json()["detail"]
    assert probe.status_code == 200 and [a.status_code for a in answers] == [200, 200, 200] and after.status_code == 200
