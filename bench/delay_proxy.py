#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that adds a fixed delay in each direction, not a bandwidth limit.

    delay_proxy.py --listen PORT --target PORT [--delay-ms 25]

Listens on 127.0.0.1:LISTEN and forwards every connection to 127.0.0.1:TARGET (it never
connects anywhere else). Each chunk read from one side is stamped with the time it arrived
and queued for its direction; that direction's writer sleeps until the chunk is due (arrival
+ delay) and then writes it, together with every later chunk that is already due. Reading
goes on while earlier chunks wait, so the delay adds latency without capping throughput
(up to HIGH_WATER bytes in flight per direction, far more than loopback's bandwidth times
the delay). A round trip through the proxy costs twice the delay.
"""

import argparse
import asyncio
import collections
import socket
import sys
import time

HOST = "127.0.0.1"
CHUNK = 256 * 1024
HIGH_WATER = 256 << 20


class Direction:
    """One direction of one connection: reader -> timed queue -> writer."""

    def __init__(self, reader, writer, delay):
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.queue = collections.deque()  # (due, bytes or None for EOF)
        self.queued = 0
        self.ready = asyncio.Event()  # the queue is not empty
        self.room = asyncio.Event()  # queued < HIGH_WATER
        self.room.set()

    def put(self, data):
        self.queue.append((time.monotonic() + self.delay, data))
        if data:
            self.queued += len(data)
            if self.queued >= HIGH_WATER:
                self.room.clear()
        self.ready.set()

    async def read_side(self):
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(CHUNK)
                if not data:
                    break
                self.put(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self.put(None)

    async def write_side(self):
        try:
            while True:
                if not self.queue:
                    self.ready.clear()
                    await self.ready.wait()
                    continue
                due = self.queue[0][0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = time.monotonic()
                batch = []
                eof = False
                while self.queue and self.queue[0][0] <= now:
                    _, data = self.queue.popleft()
                    if data is None:
                        eof = True
                        break
                    batch.append(data)
                    self.queued -= len(data)
                if self.queued < HIGH_WATER:
                    self.room.set()
                if batch:
                    self.writer.write(b"".join(batch))
                    await self.writer.drain()
                if eof:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
        except (ConnectionError, OSError):
            return


async def handle(client_r, client_w, target, delay):
    try:
        server_r, server_w = await asyncio.open_connection(HOST, target)
    except OSError as e:
        print("delay_proxy: cannot connect to %s:%d: %s" % (HOST, target, e), file=sys.stderr)
        client_w.close()
        return
    for w in (client_w, server_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = Direction(client_r, server_w, delay)
    down = Direction(server_r, client_w, delay)
    tasks = [
        asyncio.create_task(t)
        for t in (up.read_side(), up.write_side(), down.read_side(), down.write_side())
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for w in (client_w, server_w):
            w.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    ap.add_argument("--target", type=int, required=True, help="port on 127.0.0.1")
    ap.add_argument("--delay-ms", type=float, default=25.0, help="added each way")
    a = ap.parse_args()
    delay = a.delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, a.target, delay), HOST, a.listen, limit=CHUNK
    )
    print(
        "delay_proxy: 127.0.0.1:%d -> 127.0.0.1:%d, +%g ms each way"
        % (a.listen, a.target, a.delay_ms),
        file=sys.stderr,
        flush=True,
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
