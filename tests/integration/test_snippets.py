"""Every Python and shell block in the docs runs as written (see tests/snippets.py).

Each block runs in its own process group in a scratch directory, with a PATH that
holds no virtualenv (a fresh shell): what it needs, it must say in a ``prerequisite:``
line. It passes when it exits 0 with no traceback and shows what the reader is told to
expect (``EXPECT``), or, for a block that ends by serving, when its URLs answer. Every
process it started is stopped at the end: its process group, and any daemon that wrote
a pid file into the scratch directory (nginx).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest

from ..redis_server import RedisServer, redis_server_binary
from ..snippets import NOT_RUN, ROOT, RUNNABLE, Scratch, Snippet, runnable, snippets

#: Generous: a block starts hubs, nginx or Redis on 2 shared cores.
DEADLINE = 90.0
VENV = ROOT / ".venv"
VENV_BIN = VENV / "bin"


@dataclass(frozen=True)
class Expect:
    """What a reader sees when a block worked (ports/paths as documented)."""

    output: tuple[str, ...] = ()
    #: URLs that must answer 200: the block ends by serving (it is stopped then).
    serves: tuple[str, ...] = ()


EXPECT: dict[tuple[str, str], Expect] = {
    ("README.md", "The CLI"): Expect(output=('"px": 97000', "tether ", "`redis_url`")),
    ("README.md", "Secure setup"): Expect(serves=("http://127.0.0.1:8765/readyz",)),
    ("README.md", "Scale out"): Expect(output=('"px": 97000', '"px": 97001')),
    ("docs/scaling.md", "Scaling out: many hub nodes on one Redis"): Expect(
        serves=("http://127.0.0.1:8080/readyz",)
    ),
    ("docs/scaling.md", "Publishing without a hub"): Expect(output=("published at offset 1",)),
}

#: Runs a Python block the way ``python -m asyncio`` does (top-level ``await`` allowed),
#: but exits non-zero on the first exception, as a script would.
PYTHON_RUNNER = """
import ast, asyncio, inspect, sys
source = open(sys.argv[1]).read()
code = compile(source, "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__"}
if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(eval(code, namespace))
else:
    exec(code, namespace)
"""


@dataclass
class Run:
    """A block's processes and everything they printed."""

    scratch: Scratch
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.scratch.directory / "output.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, argv: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:  # each leads its own process group: its children go too
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                    break
        # Daemons leave the group (nginx forks into its own session): their pid files.
        for pidfile in self.scratch.directory.rglob("*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)

    def fail(self, why: str) -> None:
        pytest.fail(f"{why}\n--- output ---\n{self.output()[-6000:]}", pytrace=False)


def fresh_shell_env(port: int, *, tether_on_path: bool) -> dict[str, str]:
    """A new terminal's environment: no virtualenv, no TETHER_* settings but the port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["TETHER_PORT"] = str(port)  # the documented default port, mapped (like the others)
    env.pop("VIRTUAL_ENV", None)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not (Path(p) / "activate").exists()]
    if tether_on_path:
        path.insert(0, str(VENV_BIN))
    env["PATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def answers(url: str) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            return (await http.get(url)).status_code == 200
        except httpx.TransportError:
            return False


@contextlib.asynccontextmanager
async def prerequisites(snippet: Snippet, run: Run) -> AsyncIterator[dict[str, str]]:
    """Provide what the block's ``prerequisite:`` lines ask for; yields its environment."""
    port = run.scratch.port(8765)
    env = fresh_shell_env(port, tether_on_path=False)
    servers: list[RedisServer] = []
    try:
        for need in snippet.prerequisites:
            if m := re.fullmatch(r"tether on PATH \(source \.venv/bin/activate.*\)", need):
                env = {**fresh_shell_env(port, tether_on_path=True), "VIRTUAL_ENV": str(VENV)}
            elif m := re.fullmatch(r"a Redis .*?127\.0\.0\.1:(\d+).*", need):
                redis_server_binary()  # fails under CI=true when it is missing
                server = RedisServer(port=run.scratch.port(int(m.group(1))))
                server.start()
                servers.append(server)
            elif m := re.fullmatch(r"(.+) installed \(apt-get install [^)]+\)", need):
                for program in re.split(r",? and |, ", m.group(1)):
                    if not shutil.which(program, path=f"{os.environ['PATH']}:/usr/sbin"):
                        pytest.fail(f"{snippet.id} needs {program}: make test installs it")
            elif m := re.fullmatch(r".*, served: (.+)", need):
                command = run.scratch.map(m.group(1))
                port = re.search(r"--port (\d+)", command)
                assert port is not None, f"{snippet.id}: a served prerequisite names its --port"
                run.start(command.split(), env=env, cwd=run.scratch.directory)
                await until(partial(port_open, int(port.group(1))), run, f"{command} serving")
            else:
                pytest.fail(f"{snippet.id}: unknown prerequisite {need!r} (teach {__file__})")
        yield env
    finally:
        for server in servers:
            server.close()


async def until(check: Callable[[], bool | Awaitable[bool]], run: Run, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while loop.time() < deadline:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.2)
    run.fail(f"timed out waiting for {what}")


async def run_block(snippet: Snippet, scratch: Scratch) -> None:
    run = Run(scratch)
    expect = EXPECT.get(snippet.key, Expect())
    try:
        async with prerequisites(snippet, run) as env:
            script = scratch.directory / (
                "snippet.py" if snippet.language == "python" else "snippet.sh"
            )
            script.write_text(scratch.map(snippet.text))
            if snippet.language == "python":
                argv = [str(VENV_BIN / "python"), "-c", PYTHON_RUNNER, str(script)]
            else:
                argv = ["bash", "-e", str(script)]
            proc = run.start(argv, env=env, cwd=scratch.directory)
            if expect.serves:
                for url in expect.serves:
                    await until(partial(answers, scratch.map(url)), run, f"{url} answering")
                if proc.poll() not in (None, 0):
                    run.fail(f"{snippet.id} exited {proc.returncode}")
            else:
                await until(lambda: proc.poll() is not None, run, "it to end")
                if proc.returncode != 0:
                    run.fail(f"{snippet.id} exited {proc.returncode}")
            for text in expect.output:
                await until(lambda t=text: t in run.output(), run, repr(text))
            if "Traceback" in run.output():
                run.fail(f"{snippet.id} printed a traceback")
    finally:
        run.stop()


@pytest.mark.parametrize(
    "snippet",
    [s for s in runnable("python") + runnable("sh") if s.key != ("README.md", "Two commands")],
    ids=lambda s: s.id,
)
async def test_the_block_runs_as_written(snippet: Snippet, tmp_path: Path) -> None:
    await run_block(snippet, Scratch(tmp_path))


async def test_make_demo_serves_the_dashboard(tmp_path: Path) -> None:
    """The README's first block: ``make demo`` serves the dashboard at its URL (the port
    mapped through ``DEMO_PORT``); ``make test`` is the command running this test."""
    (block,) = [s for s in snippets() if s.key == ("README.md", "Two commands")]
    commands = [line.split("#")[0].strip() for line in block.text.splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci/run").read_text()
    scratch = Scratch(tmp_path)
    run = Run(scratch)
    port = scratch.port(8765)
    env = {**fresh_shell_env(port, tether_on_path=False), "DEMO_PORT": str(port)}
    try:
        run.start(["make", "demo"], env=env, cwd=ROOT)
        await until(lambda: answers(f"http://127.0.0.1:{port}/"), run, "the dashboard at /")
    finally:
        run.stop()


def test_every_program_in_the_docs_is_run_or_says_why_not() -> None:
    blocks = snippets()
    keys = {s.key for s in blocks}
    assert not set(NOT_RUN) - keys, "NOT_RUN names blocks that no longer exist"
    assert not set(EXPECT) - keys, "EXPECT names blocks that no longer exist"
    languages = {s.language for s in blocks}
    # Shell spelled another way would escape the runner: one spelling each.
    assert not languages & {"bash", "shell", "console", "py", "python3", "js", "javascript"}
    assert {s.language for s in blocks} >= RUNNABLE
    for s in blocks:
        if s.language == "python" and re.search(r"^await |^\S.*= await ", s.text, re.M):
            assert "python -m asyncio" in s.text, f"{s.id}: say where top-level await works"
