"""Walking a BPF ring buffer's records (vnetdp.datapath.ringbuf.walk) on fake
data areas laid out as the kernel lays them out: an 8-byte header (length,
BUSY and DISCARD bits, the kernel's page offset), the data, padding to 8;
positions that only grow, taken modulo the area's size."""
from __future__ import annotations

import struct

import pytest

from vnetdp.datapath.ringbuf import BUSY_BIT, DISCARD_BIT, HEADER_SIZE, record_size, walk

SIZE = 4096


def area(records: list[tuple[bytes, int]], start: int = 0, size: int = SIZE) -> tuple[bytearray, int]:
    """A data area (mapped once) holding ``records`` (data, header flags) from
    position ``start``, with garbage elsewhere; and the producer position after them."""
    data = bytearray(b"\xa5" * size)
    pos = start
    for payload, flags in records:
        raw = struct.pack("@II", len(payload) | flags, 0) + payload
        for i, b in enumerate(raw):
            data[(pos + i) % size] = b
        pos += record_size(len(payload))
    return data, pos


@pytest.mark.parametrize("length,size", [(0, 8), (1, 16), (7, 16), (8, 16), (9, 24), (40, 48)])
def test_a_record_takes_its_header_and_data_rounded_up_to_8_bytes(length, size):
    assert record_size(length) == size


def test_an_empty_ring_gives_nothing_and_keeps_the_position():
    data, producer = area([], start=800)
    assert walk(data, SIZE, 800, producer) == ([], 800)


def test_records_come_whole_in_order_and_the_position_moves_past_them():
    payloads = [b"a", b"12345678", b"thirteen byte", b""]
    data, producer = area([(p, 0) for p in payloads], start=64)
    records, pos = walk(data, SIZE, 64, producer)
    assert records == payloads
    assert pos == producer == 64 + sum(record_size(len(p)) for p in payloads)


def test_discarded_records_are_passed_over():
    data, producer = area([(b"keep1", 0), (b"drop", DISCARD_BIT), (b"keep2", 0)])
    assert walk(data, SIZE, 0, producer) == ([b"keep1", b"keep2"], producer)


def test_a_busy_record_stops_the_walk_at_itself():
    data, producer = area([(b"done", 0), (b"being written", BUSY_BIT), (b"later", 0)])
    records, pos = walk(data, SIZE, 0, producer)
    assert records == [b"done"] and pos == record_size(4)
    # the producer commits it: the next walk starts there and gets both
    data[pos:pos + 4] = struct.pack("@I", len(b"being written"))
    assert walk(data, SIZE, pos, producer) == ([b"being written", b"later"], producer)


@pytest.mark.parametrize("start", [SIZE - 8, SIZE - 16, SIZE - 24, 3 * SIZE - 8])
def test_a_record_running_past_the_end_reads_whole_mapped_once_or_twice(start):
    payload = bytes(range(40))
    data, producer = area([(b"first", 0), (payload, 0), (b"after", 0)], start=start)
    want = ([b"first", payload, b"after"], producer)
    assert walk(data, SIZE, start, producer) == want            # one mapping: the walk joins the pieces
    assert walk(data + data, SIZE, start, producer) == want     # the kernel's two mappings back to back


def test_positions_are_taken_modulo_the_size():
    start = 1000 * SIZE + 128
    data, producer = area([(b"x" * 20, 0)], start=start)
    assert walk(data, SIZE, start, producer) == ([b"x" * 20], start + record_size(20))


def test_a_full_ring_is_read_to_the_producer():
    n = SIZE // record_size(40)
    payloads = [bytes([i]) * 40 for i in range(n)]
    data, producer = area([(p, 0) for p in payloads], start=200)
    records, pos = walk(data + data, SIZE, 200, producer)
    assert records == payloads and pos == producer and producer - 200 <= SIZE
    assert HEADER_SIZE == 8
