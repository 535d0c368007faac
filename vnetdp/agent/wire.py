"""The agent's framing, shared by the CNI entry points and the agent: its one
definition. ``cni/vnetdp.c`` (the compiled entry point and the node image's
host client) speaks it too, by these names; tests/unit/test_cni_client.py
holds the two together.

One call per connection, over ``<state dir>/agent.sock`` (SOCK_STREAM):

- request: ``<plugin>\\n<env length>\\n<env: KEY=VALUE joined by NUL><stdin>``
  (lengths in decimal ASCII, at most MAX_REQUEST bytes in all), then the
  caller shuts its side for writing. The caller's open ``CNI_NETNS``
  (O_RDONLY | O_NONBLOCK) goes as a file descriptor (SCM_RIGHTS) with the
  first ``sendmsg``, of at most FIRST_SEND bytes: the agent may live in
  another mount namespace (a DaemonSet's container, ``ip netns exec``), where
  the runtime's path means nothing. A path that does not open goes as a
  path only (no descriptor).
- reply: ``<exit code> <stdout length>\\n<stdout><stderr>``, then the agent
  closes. No whole reply (a worker that died) means the call may not have
  run to its end: the caller runs it itself, or again (commands are idempotent).

Only C modules and ``os`` load here: the entry point imports this module
first, and every import is start-up time of every CNI call.
"""
import _socket
import os
import sys

MAX_REQUEST = 1 << 20
FIRST_SEND = 65536  # the first sendmsg, which carries the descriptor
MAX_FDS = 1
_FD_SIZE = 4  # an int in SCM_RIGHTS


def encode_request(plugin: str, environ, stdin: bytes) -> bytes:
    env = b"\0".join(os.fsencode(f"{k}={v}") for k, v in environ.items())
    return b"%s\n%d\n%s%s" % (plugin.encode(), len(env), env, stdin)


def decode_request(data: bytes) -> tuple[str, dict[str, str], bytes]:
    plugin, env_len, rest = data.split(b"\n", 2)
    env_blob, stdin = rest[:int(env_len)], rest[int(env_len):]
    env = dict(os.fsdecode(item).split("=", 1) for item in env_blob.split(b"\0") if item)
    return plugin.decode(), env, stdin


def encode_reply(rc: int, stdout: bytes, stderr: bytes) -> bytes:
    return b"%d %d\n%s%s" % (rc, len(stdout), stdout, stderr)


def decode_reply(data: bytes) -> tuple[int, bytes, bytes]:
    """Raises ValueError when ``data`` is not a whole reply."""
    head, sep, rest = data.partition(b"\n")
    rc, out_len = map(int, head.split())
    if not sep or len(rest) < out_len:
        raise ValueError("truncated reply")
    return rc, rest[:out_len], rest[out_len:]


def recv_all(sock, limit: int = MAX_REQUEST) -> bytes:
    chunks, size = [], 0
    while chunk := sock.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ValueError("message too large")
    return b"".join(chunks)


def recv_request(sock) -> tuple[bytes, list[int]]:
    """A whole request and the descriptors that came with it (the caller
    closes them)."""
    space = _socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
    first, ancillary, _, _ = sock.recvmsg(FIRST_SEND, space)
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + _FD_SIZE], sys.byteorder)
                    for i in range(0, len(data) - len(data) % _FD_SIZE, _FD_SIZE)]
    rest = recv_all(sock, MAX_REQUEST - len(first)) if first else b""
    return first + rest, fds


def call(path: str, plugin: str, environ, stdin: bytes, fds: tuple[int, ...] = ()
         ) -> tuple[int, bytes, bytes] | None:
    """The agent's (exit code, stdout, stderr) for one call, ``fds`` passed
    along; None when no agent answers at ``path`` (the caller then runs the
    call itself)."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(path)
        request = encode_request(plugin, environ, stdin)
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                   b"".join(fd.to_bytes(_FD_SIZE, sys.byteorder) for fd in fds))] if fds else []
        sent = s.sendmsg([request[:FIRST_SEND]], rights)
        s.sendall(request[sent:])
        s.shutdown(_socket.SHUT_WR)
        return decode_reply(recv_all(s, 1 << 30))
    except (OSError, ValueError):
        return None
    finally:
        s.close()
