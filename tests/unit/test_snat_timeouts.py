"""Which idle time ends a translated flow: its protocol's, cut short to the
embryonic timeout while no reply ever came."""
from __future__ import annotations

import socket

import pytest

from vnetdp.datapath.snat import Timeouts

T = Timeouts(tcp=7440, tcp_closing=10, udp=120, icmp=60, embryonic=30)


@pytest.mark.parametrize("proto,closing,replied,expected", [
    (socket.IPPROTO_TCP, False, True, 7440), (socket.IPPROTO_TCP, True, True, 10),
    (socket.IPPROTO_UDP, False, True, 120), (socket.IPPROTO_ICMP, False, True, 60),
    (socket.IPPROTO_TCP, False, False, 30),   # an unanswered SYN: not two hours
    (socket.IPPROTO_UDP, False, False, 30),
    (socket.IPPROTO_TCP, True, False, 10),    # never longer than the protocol's own
])
def test_timeout_of_a_flow(proto, closing, replied, expected):
    assert T.for_flow(proto, closing, replied) == expected
