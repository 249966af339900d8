"""TLS with --cert/--key, the maximum session length, and the command-line checks."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

from serve_support import SECRET, Received, wait_counter
from tests_support import HANG_GUARD_S

from mirage_desktop.serve.app import AppThread, ServeConfig, Server, ssl_context
from mirage_desktop.serve.client import FeedTrack, RemoteSession


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirage test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    c, k = tmp_path / "cert.pem", tmp_path / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def test_tls_serves_sessions_to_a_client_that_trusts_the_certificate(tmp_path, shared_engine, client_loop, frame,
                                                                      token):
    cert, key = _self_signed(tmp_path)
    server = Server(ServeConfig(secret=SECRET, port=0, cert=str(cert), key=str(key)), shared_engine)
    t = AppThread(server.make_app, "127.0.0.1", 0, ssl_context(str(cert), str(key))).start()
    try:
        assert t.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        got = Received()
        rs = RemoteSession(t.url, token, on_frame=got, ssl_verify=trust)
        client_loop.run(rs.connect(FeedTrack(lambda n: frame.copy(), fps=15)))
        got.wait(3)
        client_loop.run(rs.close())
        # a client that does not trust the certificate never gets to the server's handlers
        from aiohttp import ClientConnectorCertificateError

        rs2 = RemoteSession(t.url, token)
        try:
            client_loop.run(rs2.connect(FeedTrack(lambda n: frame.copy(), fps=15)))
            raise AssertionError("an untrusted certificate was accepted")
        except ClientConnectorCertificateError:
            pass
        assert server.opened_total == 1
    finally:
        t.call(server.close_all("test over"))
        t.stop()


def test_a_session_ends_at_the_maximum_length(serve, client_loop, token, frame):
    t, server = serve(max_session_s=1.0)
    got = Received()
    rs = RemoteSession(t.url, token, on_frame=got)
    ans = client_loop.run(rs.connect(FeedTrack(lambda n: frame.copy(), fps=15)))
    s = server.sessions[ans["session"]]
    wait_counter(s.metrics, "frames.received", 1)
    assert server.wait_sessions(lambda n: n == 0, HANG_GUARD_S)
    assert s.close_reason.startswith("maximum session length")
    assert server.metrics.counter("sessions.closed.max_length") == 1
    client_loop.run(rs.close())


def test_serve_refuses_a_half_tls_setup_and_a_missing_secret(tmp_path, capsys, monkeypatch):
    from mirage_desktop.cli import main

    monkeypatch.delenv("MIRAGE_SERVE_SECRET", raising=False)
    assert main(["serve"]) == 2
    assert "no shared secret" in capsys.readouterr().err
    monkeypatch.setenv("MIRAGE_SERVE_SECRET", "short")
    assert main(["serve", "token"]) == 2
    assert "too short" in capsys.readouterr().err
    monkeypatch.setenv("MIRAGE_SERVE_SECRET", SECRET.decode())
    assert main(["serve", "--cert", str(tmp_path / "c.pem")]) == 2
    assert "both --cert and --key" in capsys.readouterr().err


def test_run_remote_needs_a_token_file(capsys, tmp_path):
    from mirage_desktop.cli import main

    assert main(["run", "--remote", "http://127.0.0.1:1", "--output", "null"]) == 2
    assert "--remote needs --token-file" in capsys.readouterr().err
    assert main(["run", "--remote", "http://127.0.0.1:1", "--token-file", str(tmp_path / "none"),
                 "--output", "null"]) == 2
    assert "cannot read the token file" in capsys.readouterr().err


def test_media_candidates_stay_on_the_bound_address():
    from mirage_desktop.serve.app import ice_addresses_for

    assert ice_addresses_for("127.0.0.1") == ["127.0.0.1"] and ice_addresses_for("localhost") == ["127.0.0.1"]
    assert ice_addresses_for("10.1.2.3") == ["10.1.2.3"]
    assert ice_addresses_for("0.0.0.0") is None and ice_addresses_for("::") is None
