"""The tether command: serve, publish, listen, chaos, demo, config-doc.

Every hub/client option is a flag generated from :mod:`tether.config`, so the
CLI, the keyword arguments and the ``TETHER_*`` variables never disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from . import __version__, logs
from .chaos import ChaosProxy
from .client import Client, Delivery, State
from .config import ClientConfig, HubConfig, add_arguments, from_env, markdown_table
from .errors import SubscribeRefused
from .protocol import Gap


def _log_setup(args: argparse.Namespace) -> None:
    logs.setup(args.log_level, fmt=args.log_format)


def _options(args: argparse.Namespace, cls: type[HubConfig | ClientConfig]) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}


def _http_base(url: str) -> str:
    """Accept ``http://host:port``, ``ws://host:port/ws`` or ``host:port``."""
    if url.startswith("ws://"):
        url = "http://" + url[5:]
    elif url.startswith("wss://"):
        url = "https://" + url[6:]
    elif "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    return url[: -len("/ws")] if url.endswith("/ws") else url


def _ws_url(url: str) -> str:
    base = _http_base(url)
    scheme = "wss://" if base.startswith("https://") else "ws://"
    return scheme + base.split("://", 1)[1] + "/ws"


# --- serve ------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    from .server import Hub
    from .server.serve import HubServer

    try:
        hub = Hub(config=from_env(HubConfig, **_options(args, HubConfig)))
    except ValueError as exc:  # a bad option value: say which, no traceback
        print(f"tether serve: {exc}", file=sys.stderr)
        return 2
    server = HubServer(hub, log_level=args.log_level)
    try:
        await server.start()
    except OSError as exc:  # e.g. the port is taken
        print(
            f"tether serve: cannot listen on {hub.config.host}:{hub.config.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    print(f"tether hub on {server.url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Graceful: stop accepting, close every client with 1012 + a spread retry hint, drain.
    await server.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _log_setup(args)
    return asyncio.run(_serve(args))


# --- publish ----------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    words = args.words
    # Three words: over HTTP to that hub. Two: straight into Redis (--redis-url or env).
    if not (len(words) == 3 or (len(words) == 2 and args.redis_url)):
        print(
            "tether publish: expected URL TOPIC JSON, or --redis-url REDIS_URL TOPIC JSON",
            file=sys.stderr,
        )
        return 2
    via_redis = len(words) == 2
    url, topic, text = (None, *words) if via_redis else words
    try:
        data = json.loads(text)
    except ValueError as exc:
        print(f"tether publish: JSON argument is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if via_redis:
        return asyncio.run(_publish_to_redis(args.redis_url, topic, data))
    body = json.dumps({"topic": topic, "data": data}).encode()
    request = urllib.request.Request(
        _http_base(url) + "/publish",
        data=body,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {args.token}"} if args.token else {}),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"tether publish: HTTP {exc.code}: {exc.read().decode()}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"tether publish: cannot reach {url}: {exc}", file=sys.stderr)
        return 1


async def _publish_to_redis(redis_url: str, topic: str, data: object) -> int:
    """Publish straight into the hubs' Redis (no hub needed), with the hubs' own rules."""
    from .publisher import Publisher
    from .server.broker import BrokerUnavailable

    try:
        async with Publisher(redis_url) as publisher:
            offset = await publisher.publish(topic, data)
    except (ValueError, TypeError) as exc:
        print(f"tether publish: {exc}", file=sys.stderr)
        return 2
    except BrokerUnavailable as exc:
        print(f"tether publish: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps({"topic": topic, "offset": offset}))
    return 0


# --- listen -----------------------------------------------------------------------------------


def _gaps(missing: list[Gap]) -> list[dict[str, Any]]:
    return [{"epoch": g.epoch, "from": g.start, "to": g.end} for g in missing]


async def _listen(args: argparse.Namespace) -> int:
    as_json: bool = args.json
    stop = asyncio.Event()

    def err(event: dict[str, Any], text: str) -> None:
        line = json.dumps(event) if as_json else text
        print(line, file=sys.stderr, flush=True)

    failed = False

    def on_state(old: State, new: State) -> None:
        nonlocal failed
        err({"event": "state", "from": old.value, "to": new.value}, f"[state] {old} -> {new}")
        if new is State.FAILED:
            # Retries exhausted, or refused for good (a bad token): a run that cannot
            # receive anything ends, non-zero, saying why (not only at --log-level info).
            failed = True
            stop.set()

    def on_reconnect() -> None:
        err({"event": "reconnect"}, "[reconnected]")

    def on_resync(topic: str, missing: list[Gap]) -> None:
        err(
            {"event": "resync", "topic": topic, "missing": _gaps(missing)},
            f"[resync] {topic}: missing {_gaps(missing)}",
        )

    def on_message(msg: Delivery) -> None:
        if as_json:
            line = json.dumps(
                {
                    "topic": msg.topic,
                    "offset": msg.offset,
                    "epoch": msg.epoch,
                    "ts": msg.ts,
                    "recovered": msg.recovered,
                    "data": msg.data,
                }
            )
        else:
            line = f"{msg.topic} #{msg.offset} {json.dumps(msg.data)}"
        print(line, flush=True)

    client = Client(
        _ws_url(args.url),
        on_state_change=on_state,
        on_reconnect=on_reconnect,
        on_resync=on_resync,
        token=args.token,
        config=from_env(ClientConfig, **_options(args, ClientConfig)),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await client.start()
    reason: str | None = None
    try:
        async with asyncio.timeout(args.duration or None):
            await _subscribe_all(client, args.topic, on_message, stop, err, rewind=args.rewind)
            await stop.wait()
    except TimeoutError:
        pass
    except SubscribeRefused as exc:
        failed, reason = True, str(exc)
    reason = reason or client.metrics.last_error
    await client.close()
    if failed:
        print(
            f"tether listen: gave up: {reason or 'the hub could not be reached'}", file=sys.stderr
        )
        return 1
    return 0


async def _subscribe_all(
    client: Client,
    topics: list[str],
    on_message: Callable[[Delivery], None],
    stop: asyncio.Event,
    err: Callable[[dict[str, Any], str], None],
    *,
    rewind: int,
) -> None:
    """Subscribe once connected, so each confirmation can be announced on stderr
    (``{"event": "subscribed", ...}``: what a script waits for before it publishes) and a
    refusal ends the run (raises :class:`SubscribeRefused`)."""
    connected = asyncio.ensure_future(client.wait_for(State.CONNECTED))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([connected, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        connected.cancel()
        stopped.cancel()
    if stop.is_set():
        return
    for topic in topics:
        # Answered by the hub while connected.
        await client.subscribe(topic, on_message, rewind=rewind)
        if client.is_live(topic):  # (a drop meanwhile: restored on reconnect, unannounced)
            err({"event": "subscribed", "topic": topic}, f"[subscribed] {topic}")


def cmd_listen(args: argparse.Namespace) -> int:
    _log_setup(args)
    return asyncio.run(_listen(args))


# --- chaos ------------------------------------------------------------------------------------


async def _chaos(args: argparse.Namespace) -> int:
    host, _, port = args.target.rpartition(":")
    lhost, _, lport = args.listen.rpartition(":")
    proxy = ChaosProxy(
        target=(host or "127.0.0.1", int(port)), host=lhost or "127.0.0.1", port=int(lport)
    )
    await proxy.start()
    print(f"chaos proxy {proxy.host}:{proxy.port} -> {args.target}", file=sys.stderr)
    try:
        await proxy.run_schedule(
            duration=args.duration,
            cut_every=args.cut_every,
            stall_every=args.stall_every,
            stall_for=args.stall_for,
        )
    finally:
        await proxy.stop()
    print(f"chaos done: {proxy.stats}", file=sys.stderr)
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    _log_setup(args)
    return asyncio.run(_chaos(args))


# --- demo / config-doc ------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _log_setup(args)
    return asyncio.run(
        run_demo(
            port=args.port,
            duration=args.duration,
            terminal=args.terminal,
            volatile=args.volatile,
            proxy_port=args.proxy_port,
        )
    )


def cmd_config_doc(args: argparse.Namespace) -> int:
    print(config_doc())
    return 0


def config_doc() -> str:
    """The body of docs/configuration.md, generated from the config fields."""
    return "\n".join(
        [
            "# Configuration",
            "",
            "<!-- Generated by `tether config-doc` from src/tether/config.py; a test keeps",
            "     this file and the code in step. Edit the code, then regenerate. -->",
            "",
            "Every option can be given as a keyword argument (`Hub(history_size=5000)`,",
            "`Client(url, max_attempts=20)`), an environment variable, or a CLI flag",
            "(`tether serve` takes the hub's, `tether listen` the client's).",
            "Keywords win over environment variables, which win over defaults.",
            "",
            "## Hub (`Hub`, `tether serve`)",
            "",
            markdown_table(HubConfig),
            "",
            "## Client (`Client`, `tether listen`, the browser client)",
            "",
            "The browser client (`/tether.js`) takes the same options in camelCase",
            "(`backoffBase`, `maxAttempts`, …), in the same units (seconds); a test",
            "checks its defaults equal these.",
            "",
            markdown_table(ClientConfig),
            "",
        ]
    )


# --- parser -----------------------------------------------------------------------------------


def _count(text: str) -> int:
    """A non-negative message count, for argparse (which reports the ValueError's text)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    parser.add_argument("--log-level", default="warning", help="default: warning")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one object per line, for log shippers",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run a hub (WebSocket at /ws, POST /publish, /healthz)")
    add_arguments(p, HubConfig)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "publish",
        help="publish one message: over HTTP to a hub, or with --redis-url straight into Redis",
    )
    p.add_argument(
        "words",
        nargs="+",
        metavar="[URL] TOPIC JSON",
        help="hub URL (e.g. http://127.0.0.1:8765; omitted with --redis-url), topic, payload",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("TETHER_REDIS_URL") or None,
        help="publish into the Redis the hubs share, without a hub (env TETHER_REDIS_URL)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the hub or Redis (default 10)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("TETHER_TOKEN"),
        help="API key or JWT with publish rights (env TETHER_TOKEN)",
    )
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("listen", help="subscribe and print messages (a resilient client)")
    p.add_argument("url", help="hub URL, e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("--topic", action="append", required=True, help="repeat for more topics")
    p.add_argument(
        "--rewind",
        type=_count,
        default=0,
        metavar="N",
        help="first print the last N messages of each topic that the hub's history holds "
        "(default 0: only new ones)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON lines: messages on stdout, state changes, reconnects and resyncs on stderr",
    )
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")
    p.add_argument(
        "--token",
        default=os.environ.get("TETHER_TOKEN"),
        help="JWT sent as Authorization: Bearer (env TETHER_TOKEN)",
    )
    add_arguments(p, ClientConfig)
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("chaos", help="a TCP proxy that cuts and stalls connections")
    p.add_argument("--listen", default="127.0.0.1:9765", help="default 127.0.0.1:9765")
    p.add_argument("--target", default="127.0.0.1:8765", help="default 127.0.0.1:8765")
    p.add_argument("--duration", type=float, default=300.0, help="seconds; default 300")
    p.add_argument("--cut-every", type=float, default=10.0, help="mean seconds between cuts")
    p.add_argument("--stall-every", type=float, default=None, help="mean seconds between stalls")
    p.add_argument("--stall-for", type=float, default=5.0, help="stall length; default 5 s")
    p.set_defaults(func=cmd_chaos)

    p = sub.add_parser("demo", help="a live feed that survives cuts, stalls and restarts")
    p.add_argument("--port", type=int, default=8765, help="the dashboard's port (default: 8765)")
    p.add_argument(
        "--proxy-port",
        type=int,
        default=None,
        help="the chaos proxy's port, the page's real-time link (default: --port + 1; fixed, "
        "so a page left open across a restart of the demo reconnects by itself)",
    )
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")
    p.add_argument("--terminal", action="store_true", help="a terminal client instead of the page")
    p.add_argument(
        "--volatile",
        action="store_true",
        help="history dies with the hub: a restart is reported as a gap",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config-doc", help="print docs/configuration.md")
    p.set_defaults(func=cmd_config_doc)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Any = args.func
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
