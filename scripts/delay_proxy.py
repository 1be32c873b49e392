"""A TCP proxy that holds every chunk of bytes for a fixed delay in each direction, as a network
between a client and PostgreSQL would: for measuring what round trips cost.

    .venv/bin/python scripts/delay_proxy.py TARGET_PORT DELAY_MS

It listens on a free port of 127.0.0.1, prints that port on its first line of output, and
forwards each connection to TARGET_PORT on 127.0.0.1 until killed. Bytes keep their order; each
chunk leaves DELAY_MS after it arrived (at least: asyncio's timers round up to a millisecond on
Linux). One process, so that its work does not compete for the measured client's interpreter.
"""

from __future__ import annotations

import asyncio
import sys
import time


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copies `reader` to `writer`, each chunk `delay` seconds after it was read."""
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def release() -> None:
        while True:
            due, chunk = await held.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                writer.close()
                return
            writer.write(chunk)

    releasing = asyncio.create_task(release())
    try:
        while True:
            chunk = await reader.read(1 << 16)
            await held.put((time.monotonic() + delay, chunk))
            if not chunk:
                break
    except ConnectionError:
        await held.put((time.monotonic(), b""))
    await releasing


async def _serve(target_port: int, delay: float) -> None:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", target_port
            )
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pump(reader, upstream_writer, delay),
            _pump(upstream_reader, writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(_serve(int(sys.argv[1]), float(sys.argv[2]) / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
