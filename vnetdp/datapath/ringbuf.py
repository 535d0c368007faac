"""Reading a pinned BPF ring buffer (BPF_MAP_TYPE_RINGBUF) without bcc.

What the kernel offers a consumer (Documentation/bpf/ringbuf.rst,
kernel/bpf/ringbuf.c), through mmap of the map's fd:

- offset 0, one page, the only part that may be mapped writable: the
  consumer position, an ``unsigned long`` the consumer moves past what it
  has read (the kernel reads it to know how much room producers have);
- from offset one page, read-only: the producer position (one page), then
  the data area, ``max_entries`` bytes (a power of 2 of whole pages), mapped
  twice back to back, so that a record running past the end reads as one
  piece.

Positions count bytes and only grow; position p is at p & (size - 1) in the
data area. A record is an 8-byte header, then its data; the next record
starts at the next 8-byte boundary. The header's first u32 is the data's
length, with BUSY (bit 31: reserved, still being written) and DISCARD (bit
30: skip it); the second is the kernel's own. A consumer reads from its
position up to the producer's, stops at a BUSY record (the ones after it
wait for it), skips DISCARDed ones, then publishes its new position. The fd
polls readable while there is data; the kernel wakes a waiter only when the
consumer had caught up, so a reader drains everything before it waits.

There is one consumer position per ring buffer: two readers would steal
each other's records, so a ring buffer has one reader at a time (the
caller's to arrange). Reads of the shared pages are plain loads, which
x86-64's ordering makes safe; weaker architectures would want barriers.
"""
from __future__ import annotations

import mmap
import os
import select
import struct
from vnetdp.datapath import syscall

BPF_MAP_TYPE_RINGBUF = 27
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8

_POS = struct.Struct("@L")      # unsigned long, the kernel's positions
_LEN = struct.Struct("@I")      # the header's length word


class NotARingBuffer(ValueError):
    """The pin is a BPF object, but not a ring buffer map."""


def record_size(length: int) -> int:
    """Bytes a record with ``length`` bytes of data takes: header, data, padding to 8."""
    return (length + HEADER_SIZE + 7) & ~7


def walk(data, size: int, consumer: int, producer: int) -> tuple[list[bytes], int]:
    """The records committed between ``consumer`` and ``producer`` in the data
    area ``data`` (``size`` bytes, a power of 2; ``data`` may hold it once or,
    as mapped, twice), and the position to consume up to: the producer's, or
    the first record still BUSY. DISCARDed records are passed over."""
    mask = size - 1
    records = []
    pos = consumer
    while pos < producer:
        off = pos & mask
        word = _LEN.unpack_from(data, off)[0]
        if word & BUSY_BIT:
            break
        length = word & ~(BUSY_BIT | DISCARD_BIT)
        if not word & DISCARD_BIT:
            start = off + HEADER_SIZE
            end = start + length
            if end <= len(data):
                records.append(bytes(data[start:end]))
            else:  # one mapping of the area: the record wraps to its start
                start &= mask
                head = bytes(data[start:min(start + length, size)])
                records.append(head + bytes(data[:length - len(head)]))
        pos += record_size(length)
    return records, pos


class RingBuffer:
    """One pinned ring buffer, mapped for reading (``with`` closes it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = syscall.obj_get(path)
        self._consumer = self._producer = self._epoll = None
        try:
            info = syscall.obj_info(self.fd, syscall.MapInfo())
            if info.type != BPF_MAP_TYPE_RINGBUF:
                raise NotARingBuffer(f"{path} is a BPF map of type {info.type}, not a ring buffer")
            self.size = info.max_entries
            page = mmap.PAGESIZE
            self._consumer = mmap.mmap(self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._producer = mmap.mmap(self.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                                       offset=page)
            self._data = memoryview(self._producer)[page:]
            self._epoll = select.epoll()
            self._epoll.register(self.fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    @property
    def consumer_pos(self) -> int:
        return _POS.unpack_from(self._consumer, 0)[0]

    @property
    def producer_pos(self) -> int:
        return _POS.unpack_from(self._producer, 0)[0]

    def pending(self) -> int:
        """Bytes produced and not yet consumed."""
        return self.producer_pos - self.consumer_pos

    def read(self) -> list[bytes]:
        """Every record committed since the last read; consumes them."""
        records, pos = walk(self._data, self.size, self.consumer_pos, self.producer_pos)
        _POS.pack_into(self._consumer, 0, pos)
        return records

    def skip(self) -> None:
        """Consume everything produced so far unread (events from before we came)."""
        _POS.pack_into(self._consumer, 0, self.producer_pos)

    def wait(self, timeout: float | None) -> bool:
        """Wait until data may be there (True) or ``timeout`` seconds pass (False)."""
        return bool(self._epoll.poll(-1 if timeout is None else timeout))

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._producer is not None:
            self._data.release()
            self._producer.close()
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
