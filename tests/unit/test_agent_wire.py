"""The agent's framing (vnetdp.agent.wire), shared by the CNI entry point and
the agent: requests and replies round trip whatever the bytes, a cut reply is
an error, and ``call`` falls back (None) when no agent answers."""
from __future__ import annotations

import os
import socket
import threading

import pytest

from helpers import ADD_ENV
from vnetdp.agent import server, wire

ENVIRONS = [
    {},
    ADD_ENV,
    {**ADD_ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web", "X": "a=b==c", "EMPTY": ""},
    {"LANG": "C.UTF-8", "NAME": "pöd\nwith a newline", "RAW": os.fsdecode(b"\xff\xfe")},
]
STDINS = [b"", b'{"cniVersion": "1.1.0"}', b"\x00\n\xff 12\n3\n\x00", os.urandom(70000)]


@pytest.mark.parametrize("environ", ENVIRONS)
@pytest.mark.parametrize("stdin", STDINS, ids=["empty", "json", "binary", "large"])
def test_requests_round_trip(environ, stdin):
    assert wire.decode_request(wire.encode_request("vnetdp-ipam", environ, stdin)) == ("vnetdp-ipam", environ, stdin)


@pytest.mark.parametrize("rc,out,err", [(0, b"", b""), (1, b'{"code": 7}\n', b"log\nlines\n"),
                                        (0, b"\x00\n\xff", b"\x00"), (2, os.urandom(70000), b"")])
def test_replies_round_trip(rc, out, err):
    assert wire.decode_reply(wire.encode_reply(rc, out, err)) == (rc, out, err)


@pytest.mark.parametrize("data", [
    b"", b"0", b"0 5", b"0 5\nabcd", b"x 1\na", b"0\n", b"0 1 2\nab",
    wire.encode_reply(0, b'{"cniVersion": "1.1.0"}', b"")[:-1],
])
def test_a_cut_or_malformed_reply_is_a_value_error(data):
    with pytest.raises(ValueError):
        wire.decode_reply(data)


def test_recv_all_reads_to_the_end_and_refuses_more_than_the_limit():
    for size, limit in [(300000, wire.MAX_REQUEST), (1001, 1000)]:
        a, b = socket.socketpair()
        with a, b:
            def send():
                a.sendall(b"x" * size)
                a.shutdown(socket.SHUT_WR)
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            if size <= limit:
                assert wire.recv_all(b, limit) == b"x" * size
            else:
                with pytest.raises(ValueError):
                    wire.recv_all(b, limit)
            sender.join(5)


def serve_once(path: str, reply) -> threading.Thread:
    """A one-call agent at ``path``: answers ``reply(request)`` (bytes), or
    closes without answering when it is None; requests are kept on the thread."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)

    def serve():
        with sock:
            conn, _ = sock.accept()
            with conn:
                thread.request = wire.recv_all(conn)
                answer = reply(thread.request)
                if answer is not None:
                    conn.sendall(answer)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_call_gets_the_agents_reply(tmp_path):
    path = str(tmp_path / "agent.sock")
    stdin = os.urandom(300000)  # more than a socket buffer each way
    agent = serve_once(path, lambda request: wire.encode_reply(1, request[-300000:], b"err"))
    assert wire.call(path, "vnetdp", ADD_ENV, stdin) == (1, stdin, b"err")
    agent.join(5)
    assert wire.decode_request(agent.request) == ("vnetdp", ADD_ENV, stdin)


def test_call_is_none_when_nothing_listens(tmp_path):
    assert wire.call(str(tmp_path / "missing.sock"), "vnetdp", ADD_ENV, b"{}") is None
    stale = str(tmp_path / "stale.sock")
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(stale)  # bound, closed: refused
    assert wire.call(stale, "vnetdp", ADD_ENV, b"{}") is None
    (tmp_path / "file").write_text("")
    assert wire.call(str(tmp_path / "file"), "vnetdp", ADD_ENV, b"{}") is None


@pytest.mark.parametrize("reply", [lambda request: None, lambda request: b"0 100\n{}"])
def test_call_is_none_when_the_agent_answers_no_whole_reply(tmp_path, reply):
    path = str(tmp_path / "agent.sock")
    agent = serve_once(path, reply)
    assert wire.call(path, "vnetdp", ADD_ENV, b"{}") is None
    agent.join(5)


@pytest.fixture
def saved_environ():
    """run_call makes the call's environment the process's: restore ours after."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_agent_runs_a_framed_call_as_the_entry_point_would(saved_environ):
    request = wire.encode_request("vnetdp-ipam", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    rc, out, err = wire.decode_reply(server.run_call(request))
    assert (rc, err) == (0, b"")
    assert out.startswith(b'{"cniVersion": "0.4.0", "supportedVersions": ["0.3.0"')
    assert os.environ == {"CNI_COMMAND": "VERSION"}
