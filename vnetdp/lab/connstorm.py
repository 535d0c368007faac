"""Many short TCP connections from lab namespaces to a line-echo server.

Used by the SNAT tests (every connection must succeed, concurrent flows must
never share a translated source), the benchmark (connections per second),
and the VNet features' tests and demo rows (public IPs, the load balancer).
Everything runs in one asyncio loop of the calling thread; sockets
are created inside the namespace they belong to and keep it.
"""
from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from vnetdp import netns

CONNECT_TIMEOUT_S = 5


def ns_socket(ns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in ``ns``."""
    with netns.enter(ns):
        return socket.socket(socket.AF_INET, kind)


@dataclass(frozen=True)
class Session:
    peer: tuple[str, int]   # the source the server saw
    opened: float           # time.monotonic()
    closed: float


class EchoServer:
    """Echoes each line prefixed with the source it came from ("ip:port ");
    keeps when each source was connected (``sessions``)."""

    def __init__(self, ns: str, addr: str, port: int) -> None:
        self.listener = ns_socket(ns)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((addr, port))
        self.listener.setblocking(False)
        self.addr = (addr, port)
        self.sessions: list[Session] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer, opened = writer.get_extra_info("peername"), time.monotonic()
        try:
            while line := await reader.readline():
                writer.write(f"{peer[0]}:{peer[1]} ".encode() + line)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()
        self.sessions.append(Session(tuple(peer), opened, time.monotonic()))

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, sock=self.listener, backlog=4096)


async def open_from(ns: str, dest: tuple[str, int], sport: int = 0
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from ``ns`` (from ``sport`` if given) to ``dest``."""
    s = ns_socket(ns)
    s.setblocking(False)
    if sport:
        s.bind(("0.0.0.0", sport))
    try:  # a lost SYN is a failure to count, not minutes of retransmission
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, dest), CONNECT_TIMEOUT_S)
    except BaseException:
        s.close()
        raise
    return await asyncio.open_connection(sock=s)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str
                   ) -> tuple[str, int]:
    """Send one line, check its echo; returns the source the server saw."""
    writer.write(f"{token}\n".encode())
    await writer.drain()
    seen, echoed = (await asyncio.wait_for(reader.readline(), 10)).decode().split()
    if echoed != token:
        raise AssertionError(f"{token} got the echo of {echoed}")
    host, port = seen.rsplit(":", 1)
    return host, int(port)


async def source_seen(server_ns: str, listen: tuple[str, int], client_ns: str, dest: tuple[str, int]) -> str:
    """The source an echo server in ``server_ns`` listening on ``listen`` sees
    when ``client_ns`` connects to ``dest`` (``listen`` itself, or an address
    the fabric translates to it)."""
    server = await EchoServer(server_ns, *listen).start()
    try:
        reader, writer = await open_from(client_ns, dest)
        try:
            return (await exchange(reader, writer, "who"))[0]
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


@dataclass(frozen=True)
class Job:
    ns: str
    sport: int       # 0: an ephemeral port
    token: str


@dataclass
class StormResult:
    results: list    # (source ip, port) the server saw, or the exception
    seconds: float

    @property
    def failures(self) -> list:
        return [r for r in self.results if isinstance(r, BaseException)]

    @property
    def rate(self) -> float:
        return len(self.results) / self.seconds


async def storm(jobs: list[Job], dest: tuple[str, int], concurrency: int = 200) -> StormResult:
    """One short connection per job (the client closes first), ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def one(job: Job):
        async with limit:
            try:
                reader, writer = await open_from(job.ns, dest, job.sport)
                try:
                    return await exchange(reader, writer, job.token)
                finally:
                    writer.close()
            except Exception as e:  # reported with the others
                return e

    start = time.monotonic()
    results = await asyncio.gather(*(one(j) for j in jobs))
    return StormResult(list(results), time.monotonic() - start)
