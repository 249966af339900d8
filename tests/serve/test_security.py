"""Tokens, rate limits, CORS, the frame guard, control-message limits and anomaly abandonment."""

from __future__ import annotations

import json
import time

import aiohttp
import cv2
import numpy as np
import pytest
from serve_support import SECRET, SIZE, Received, jpeg, wait_counter
from tests_support import HANG_GUARD_S

from mirage_desktop.serve.auth import make_token
from mirage_desktop.serve.client import FeedTrack, RemoteSession

ENDPOINTS = [("GET", "/health"), ("GET", "/metrics"), ("GET", "/webrtc/connections"), ("POST", "/offer")]


def _request(client_loop, method, url, headers=None, body=None):
    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.request(method, url, headers=headers or {}, json=body) as r:
                return r.status, await r.text(), dict(r.headers)

    return client_loop.run(go())


def _bad_tokens():
    return {
        "missing": None,
        "not bearer": "Basic dXNlcjpwYXNz",
        "malformed": "Bearer not-a-jwt",
        "expired": "Bearer " + make_token(SECRET, 60, now=time.time() - 3600),
        "forged": "Bearer " + make_token(b"another-secret-0123456789abcdef-012345", 3600),
    }


@pytest.mark.parametrize("case", list(_bad_tokens()))
def test_a_bad_token_is_401_everywhere_and_nothing_starts(serve, client_loop, case):
    t, server = serve(connect_limit=100)
    header = _bad_tokens()[case]
    for method, path in ENDPOINTS:
        body = {"sdp": "v=0", "type": "offer"} if method == "POST" else None
        status, text, headers = _request(client_loop, method, t.url + path,
                                         {"Authorization": header} if header else {}, body)
        assert status == 401, (path, status, text)
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        if case == "expired":
            assert "expired" in json.loads(text)["reason"]
    assert server.opened_total == 0 and not server.sessions
    assert server.metrics.counter("requests.rejected.unauthorized") == len(ENDPOINTS)


def test_the_valid_token_opens_the_endpoints_and_the_page_is_public(serve, client_loop, token):
    t, _ = serve()
    auth = {"Authorization": f"Bearer {token}"}
    status, text, _ = _request(client_loop, "GET", t.url + "/health", auth)
    assert status == 200 and json.loads(text)["level"] in ("green", "yellow")
    status, text, headers = _request(client_loop, "GET", t.url + "/")
    assert status == 200 and "<video" in text and "default-src 'self'" in headers["Content-Security-Policy"]


def test_connection_attempts_past_the_limit_are_429(serve, client_loop, token):
    t, server = serve(connect_limit=3, connect_window_s=3600)
    statuses = [_request(client_loop, "POST", t.url + "/offer", {"Authorization": "Bearer x"},
                         {"sdp": "v=0", "type": "offer"})[0] for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]  # counted before the token is read: no brute force
    status, _, headers = _request(client_loop, "POST", t.url + "/offer", {"Authorization": f"Bearer {token}"},
                                  {"sdp": "v=0", "type": "offer"})
    assert status == 429 and int(headers["Retry-After"]) > 0  # a good token waits its turn too
    assert server.metrics.counter("requests.rejected.rate_limited") == 3 and server.opened_total == 0


def test_behind_a_trusted_proxy_the_limit_counts_each_client(serve, client_loop):
    t, server = serve(connect_limit=2, connect_window_s=3600, trusted_proxies=("127.0.0.1",))

    def attempt(client):
        return _request(client_loop, "POST", t.url + "/offer", {"Authorization": "Bearer x",
                                                                 "X-Forwarded-For": f"198.51.100.9, {client}"},
                        {"sdp": "v=0", "type": "offer"})[0]

    assert [attempt("203.0.113.1") for _ in range(3)] == [401, 401, 429]
    assert attempt("203.0.113.2") == 401  # another client behind the same balancer has its own count


def test_an_untrusted_peer_cannot_dodge_the_limit_with_a_header(serve, client_loop):
    t, server = serve(connect_limit=2, connect_window_s=3600)
    statuses = [_request(client_loop, "POST", t.url + "/offer", {"Authorization": "Bearer x",
                                                                 "X-Forwarded-For": f"203.0.113.{i}"},
                         {"sdp": "v=0", "type": "offer"})[0] for i in range(3)]
    assert statuses == [401, 401, 429]


def test_cors_answers_only_the_served_origin(serve, client_loop, token):
    t, _ = serve()
    auth = {"Authorization": f"Bearer {token}"}
    status, _, h = _request(client_loop, "OPTIONS", t.url + "/offer",
                            {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 403 and "Access-Control-Allow-Origin" not in h
    status, _, h = _request(client_loop, "GET", t.url + "/health", {**auth, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in h  # the browser keeps the answer from the other page
    status, _, h = _request(client_loop, "OPTIONS", t.url + "/offer",
                            {"Origin": t.url, "Access-Control-Request-Method": "POST"})
    assert status == 204 and h["Access-Control-Allow-Origin"] == t.url


def _session(client_loop, t, token, frame_fn, photo=None, fps=30):
    got = Received()
    rs = RemoteSession(t.url, token, on_frame=got)
    ans = client_loop.run(rs.connect(FeedTrack(frame_fn, fps=fps), photo=photo, consent=photo is not None))
    return rs, got, ans


def test_an_oversize_frame_is_rejected_and_counted(serve, client_loop, token, frame):
    t, server = serve(max_width=SIZE, max_height=SIZE)
    big = cv2.resize(frame, (SIZE * 2, SIZE * 2))
    sent_big = []

    def frames(n):
        if n == 20:  # one frame over the limit in a stream of good ones
            sent_big.append(n)
            return big.copy()
        return frame.copy()

    rs, got, ans = _session(client_loop, t, token, frames)
    s = server.sessions[ans["session"]]
    wait_counter(s.metrics, "frames.received", 40)
    assert s.metrics.counter("frames.rejected.oversize") == 1 and s.guard.invalid == 1
    assert server.metrics.counter("frames.rejected.oversize") == 1
    assert s.close_reason is None  # one bad frame is no anomaly
    got.wait(1)  # the session goes on
    client_loop.run(rs.close())


def test_thirty_percent_invalid_frames_over_200_close_the_session_with_its_reason(serve, client_loop, token, frame):
    t, server = serve(max_width=SIZE, max_height=SIZE)
    big = cv2.resize(frame, (SIZE + 64, SIZE + 64))

    def frames(n):
        return big.copy() if n % 5 in (0, 2) else frame.copy()  # 40 % over the limit

    rs, got, ans = _session(client_loop, t, token, frames)
    s = server.sessions[ans["session"]]
    assert server.wait_sessions(lambda n: n == 0, HANG_GUARD_S)
    assert s.close_reason.startswith("anomaly:") and "of the last 200 frames" in s.close_reason
    assert s.metrics.counter("frames.received") >= 200  # not before a full window
    assert server.metrics.counter("sessions.closed.anomaly") == 1
    assert client_loop.run(_ended(rs))
    client_loop.run(rs.close())


def test_a_fifth_invalid_frames_is_tolerated(serve, client_loop, token, frame):
    t, server = serve(max_width=SIZE, max_height=SIZE)
    big = cv2.resize(frame, (SIZE + 64, SIZE + 64))
    rs, got, ans = _session(client_loop, t, token, lambda n: big.copy() if n % 5 == 0 else frame.copy())
    s = server.sessions[ans["session"]]
    wait_counter(s.metrics, "frames.received", 260)
    assert s.close_reason is None and s.guard.invalid >= 45  # more than a window's worth of them, spread out
    client_loop.run(rs.close())


async def _ended(rs):
    import asyncio

    await asyncio.wait_for(rs.ended.wait(), HANG_GUARD_S)
    return True


def test_control_messages_over_the_byte_limit_are_rejected_and_a_flood_closes_the_channel(
        serve, client_loop, token, frame):
    t, server = serve(max_control_bytes=256, control_rate=5)
    rs, got, ans = _session(client_loop, t, token, lambda n: frame.copy())
    s = server.sessions[ans["session"]]
    got.wait(1)  # connected: the data channel is open by now

    async def send(obj):
        rs.send_control(obj)

    client_loop.run(send(json.dumps({"type": "ping", "t": 0, "pad": "x" * 1000})))
    wait_counter(s.metrics, "control.rejected.oversize", 1)
    for _ in range(10):
        client_loop.run(send({"type": "ping", "t": 0}))
    wait_counter(s.metrics, "control.rate_limited", 1)
    assert s.control_closed == "too many control messages"
    assert server.metrics.counter("control.rejected.oversize") == 1
    client_loop.run(rs.close())


def test_an_identity_upload_needs_the_token_and_the_consent(serve, client_loop, token, frame, astronaut):
    t, server = serve()
    rs, got, ans = _session(client_loop, t, token, lambda n: frame.copy())
    url = f"{t.url}/sessions/{ans['session']}/identity"
    import base64

    body = {"photo": base64.b64encode(jpeg(astronaut)).decode(), "consent": True}
    assert _request(client_loop, "POST", url, {}, body)[0] == 401
    assert _request(client_loop, "POST", url, {"Authorization": f"Bearer {token}"}, {**body, "consent": False})[0] \
        == 403
    s = server.sessions[ans["session"]]
    assert s.engine.identity is None
    status, text, _ = _request(client_loop, "POST", url, {"Authorization": f"Bearer {token}"}, body)
    assert status == 200 and s.engine.identity is not None and s.engine.latent is not None
    client_loop.run(rs.close())


def test_the_session_cap_refuses_one_more(serve, client_loop, token, frame):
    t, server = serve(max_sessions=1)
    rs, got, ans = _session(client_loop, t, token, lambda n: frame.copy())
    from mirage_desktop.serve.client import ServeError

    with pytest.raises(ServeError) as err:
        _session(client_loop, t, token, lambda n: frame.copy())
    assert err.value.status == 503 and len(server.sessions) == 1
    client_loop.run(rs.close())


def test_idle_sessions_are_closed(serve, client_loop, token, frame):
    t, server = serve(idle_timeout_s=1.0)
    stop = []
    rs, got, ans = _session(client_loop, t, token, lambda n: None if stop else frame.copy())
    s = server.sessions[ans["session"]]
    got.wait(1)
    stop.append(True)  # the camera stops sending
    assert server.wait_sessions(lambda n: n == 0, HANG_GUARD_S)
    assert s.close_reason.startswith("idle")
    client_loop.run(rs.close())


def test_the_token_command_prints_a_token_for_the_same_secret(tmp_path, capsys):
    from mirage_desktop.cli import main
    from mirage_desktop.serve.auth import verify_token

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    assert main(["serve", "token", "--secret-file", str(secret), "--ttl", "8h"]) == 0
    claims = verify_token(SECRET, capsys.readouterr().out.strip())
    assert claims["exp"] - claims["iat"] == 8 * 3600
    assert main(["serve", "token", "--secret-file", str(tmp_path / "missing")]) == 2
    assert main(["serve", "token", "--secret-file", str(secret), "--ttl", "soon"]) == 2
    np.testing.assert_equal(len(capsys.readouterr().err.splitlines()), 2)
