"""`mirage serve`: the engine as a secured WebRTC server (on the GPU machine), with a browser
client at / and the /health, /metrics and /webrtc/connections endpoints.
`mirage serve token --ttl 8h` prints a token for the same secret."""

from __future__ import annotations

import sys

from .common import add_setting_flags, model_overrides, settings_from_args


def add_arguments(p) -> None:
    p.add_argument("action", nargs="?", choices=["token"], help="token: print a token for the secret and exit")
    p.add_argument("--secret-file", metavar="FILE", help="the shared secret (else MIRAGE_SERVE_SECRET)")
    p.add_argument("--ttl", default="8h", help="how long a printed token is valid (8h, 30m, 3600; default 8h)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443)")
    p.add_argument("--cert", help="TLS certificate (PEM); with --key the server speaks HTTPS")
    p.add_argument("--key", help="TLS private key (PEM)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-sessions", type=int, default=4, help="sessions at once (default 4)")
    g.add_argument("--max-resolution", default="1920x1080", help="largest video frame accepted (default 1920x1080)")
    g.add_argument("--max-control-bytes", type=int, default=4096, help="largest control message (default 4096)")
    g.add_argument("--control-rate", type=int, default=20, help="control messages per second per session")
    g.add_argument("--connect-limit", type=int, default=10,
                   help="connection attempts per address per minute (default 10)")
    g.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                   help="a load balancer's address: its X-Forwarded-For names the client for the rate limit")
    g.add_argument("--idle-timeout", type=float, default=30.0, help="close a session without video after S s")
    g.add_argument("--max-session", type=float, default=8 * 3600.0, help="longest session in s (default 8 h)")
    add_setting_flags(p.add_argument_group("faces and models"), ["max_faces", "providers", "swapper_precision",
                                                                 "enable_ai_mark"])
    add_setting_flags(p.add_argument_group("enhancer (one model, shared by the sessions)"),
                      ["enable_enhancer", "enhancer", "enhancer_interval"])
    add_setting_flags(p.add_argument_group("occlusion-aware mask (one parser, shared by the sessions)"),
                      ["enable_parser", "parser_model", "parser_regions", "parser_interval"])
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="use this ONNX file for a model instead of the downloaded one")


def parse_resolution(text: str) -> tuple[int, int]:
    from ..errors import MirageError

    try:
        w, h = (int(x) for x in str(text).lower().split("x"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    raise MirageError(f"--max-resolution {text!r} is not WIDTHxHEIGHT", "e.g. --max-resolution 1280x720")


def run(args) -> int:
    from ..errors import MirageError
    from ..serve import require_serve_extra
    from ..serve.auth import load_secret, make_token, parse_ttl

    require_serve_extra()
    secret = load_secret(args.secret_file)
    if args.action == "token":
        print(make_token(secret, parse_ttl(args.ttl)))
        return 0
    if bool(args.cert) != bool(args.key):
        raise MirageError("TLS needs both --cert and --key", "give both, or neither for plain HTTP on loopback")
    import asyncio

    from ..engine import Engine
    from ..serve.app import ServeConfig, Server, ice_addresses_for, ssl_context
    from ..serve.tracks import restrict_ice_addresses

    w, h = parse_resolution(args.max_resolution)
    cfg = ServeConfig(secret=secret, host=args.host, port=args.port, cert=args.cert, key=args.key,
                      max_sessions=args.max_sessions, max_width=w, max_height=h,
                      max_control_bytes=args.max_control_bytes, control_rate=args.control_rate,
                      connect_limit=args.connect_limit, idle_timeout_s=args.idle_timeout,
                      max_session_s=args.max_session, trusted_proxies=tuple(args.trusted_proxy))
    engine = Engine(settings_from_args(args), model_overrides=model_overrides(args))
    st = engine.load_models()  # once: every session runs on these
    for reason in st.passthrough:
        print(f"mirage serve: note: {reason}", file=sys.stderr)
    restrict_ice_addresses(ice_addresses_for(args.host))
    server = Server(cfg, engine)
    from aiohttp import web

    print(f"mirage serve: {cfg.scheme}://{args.host}:{args.port}/ on {st.provider}, up to {cfg.max_sessions} "
          f"sessions; Ctrl-C to stop", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.cert:
        print("mirage serve: warning: serving beyond this machine without TLS; use --cert/--key", file=sys.stderr)
    web.run_app(server.make_app(), host=args.host, port=args.port, ssl_context=ssl_context(args.cert, args.key),
                print=None, loop=asyncio.new_event_loop())
    return 0
