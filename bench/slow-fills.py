"""The reproduction of issue 29's first defect, against the release binary: many fills whose origins send
1 KiB and then pause, started at once from several client addresses; then a new small file and a stored one
are asked for. Prints what the clients got and how long the new file took.

Usage: python3 bench/slow-fills.py BASE_URL HOST N_SLOW N_ADDRESSES PAUSE_SECS
  BASE_URL   http://127.0.0.1:PORT of the cache (its domain HOST has the slow origin below)
Runs the slow origin itself on 127.0.0.1:ORIGIN_PORT (env ORIGIN_PORT): /slow/<n> sends 1 KiB of a
1 MB body, then pauses PAUSE_SECS; /small/<n> sends 100 bytes at once. One small file is stored before the
flood, so a hit is measured beside a new fill.
"""
import asyncio
import os
import sys
import time

BASE, HOST, N, ADDRS, PAUSE = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
ORIGIN_PORT = int(os.environ["ORIGIN_PORT"])


async def origin(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        if path.startswith("/small/"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 100)
            await writer.drain()
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1024)
            await writer.drain()
            await asyncio.sleep(PAUSE)
        writer.close()
    except Exception:
        pass


async def ask(path, source, timeout):
    """Status and the time of the first body byte (None when none came within `timeout`)."""
    host, port = BASE.removeprefix("http://").rsplit(":", 1)
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), local_addr=(source, 0)), timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ")[1])
        if status != 200:
            writer.close()
            return status, time.monotonic() - t0, writer
        await asyncio.wait_for(reader.read(1), timeout)
        return status, time.monotonic() - t0, writer
    except (asyncio.TimeoutError, OSError):
        return None, time.monotonic() - t0, None


async def main():
    server = await asyncio.start_server(origin, "127.0.0.1", ORIGIN_PORT)
    sources = [f"127.0.1.{i + 1}" for i in range(ADDRS)]
    status, _, w = await ask("/small/stored", "127.0.2.1", 10)
    assert status == 200, f"the first file: {status}"
    w.close()
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    results = await asyncio.gather(*(ask(f"/slow/{i}", sources[i % ADDRS], 20) for i in range(N)))
    got = sum(1 for s, _, _ in results if s == 200)
    refused = sum(1 for s, _, _ in results if s == 503)
    none = sum(1 for s, _, _ in results if s is None)
    print(f"slow fills asked: {N} from {ADDRS} addresses in {time.monotonic() - t0:.1f} s: "
          f"{got} got their first byte, {refused} refused 503, {none} got nothing within 20 s")
    for label, path in (("a new 100-byte file", "/small/new"), ("a stored file", "/small/stored")):
        status, took, w = await ask(path, "127.0.2.1", 30)
        print(f"{label}: status {status} after {took * 1000:.0f} ms")
        if w:
            w.close()
    for _, _, w in results:
        if w:
            w.close()
    server.close()


asyncio.run(main())
