"""A backend that records each request it parses, for the smuggling corpus.

    python recording_backend.py RECORD_FILE      (port from BGDEPLOY_PORT)

It parses with httptools (llhttp, the parser of Node.js, where most of the corpus's
CVEs were found), appends one JSON line per complete message to RECORD_FILE
({"conn", "method", "url", "body"}) or per parse error ({"conn", "error"}), and answers
each message with its own URL and body length, so a client can tell which request
of its bytes the backend saw.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys

import httptools

RECORD = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - one line per write, for the process's life
IDS = itertools.count()


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.conn = next(IDS)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            RECORD.write(json.dumps({"conn": self.conn, "error": str(e)}) + "\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        url, body = self.url.decode("latin-1"), self.body.decode("latin-1")
        self.url, self.body = b"", b""
        method = self.parser.get_method().decode()
        line = {"conn": self.conn, "method": method, "url": url, "body": body}
        RECORD.write(json.dumps(line) + "\n")
        answer = f"{url} {len(body)}".encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(answer), answer)
        )


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, "127.0.0.1", int(os.environ["BGDEPLOY_PORT"]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
