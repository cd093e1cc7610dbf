"""Flow control between the two connections of an exchange, the same in both directions.

A full write buffer on one side pauses reading on the side that feeds it, and
reading resumes when the buffer drains below the low-water mark: a slow client
holds back its upstream's answer, a slow upstream holds back the client's body.
Nothing is buffered whole in the router.
"""

from __future__ import annotations

import asyncio

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class FlowControl:
    """A connection that pauses its feeder while its own write buffer is full.

    An asyncio protocol by its methods, but no ``asyncio.Protocol`` subclass: the
    compiled build makes it an extension type (flow.pxd), which cannot derive
    from a Python class.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.read_paused = False

    def feeder(self) -> FlowControl | None:
        """The connection whose reads become this one's writes, if any now."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def eof_received(self) -> bool | None:
        return None  # the peer half-closed: close the transport, as asyncio.Protocol does

    def pause_writing(self) -> None:
        other = self.feeder()
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self.feeder()
        if other is not None:
            other.resume_reading()

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
