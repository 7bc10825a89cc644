#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into corpus/<target>/seed-*.

Each target's input format is the one its body in core/src/fuzzing.rs reads:
- frame_decoder: one byte (where the input is split in two reads), then client frame bytes;
- http_request: raw request-head bytes;
- connection: one mode byte (bit 0: not dev mode, bit 1: upgrade first, bit 2: /echo rather
  than /ws, bit 3: writes limited to 7 bytes), then reads, each a size byte and the bytes.
Run it from fuzz/ after changing a seed; fuzzer-found entries are kept beside the seeds.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def frame(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d", masked=True, rsv=0):
    out = bytearray([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        out.append(bit | n)
    elif n < 65536:
        out.append(bit | 126)
        out += struct.pack(">H", n)
    else:
        out.append(bit | 127)
        out += struct.pack(">Q", n)
    if masked:
        out += mask
        out += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


def text(s, **kw):
    return frame(1, s.encode() if isinstance(s, str) else s, **kw)


def close(code, reason=b""):
    return frame(8, struct.pack(">H", code) + reason)


def get(path, extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def upgrade(path, extra=""):
    return (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def reads(data):
    """Encodes `data` as the connection target's sequence of (size byte, bytes) reads."""
    out = bytearray()
    offset = step = 0
    while offset < len(data):
        multiplier = 1 + step % 5
        k = min(60, max(0, (len(data) - offset - 1) // multiplier))
        size = 1 + k * multiplier
        out.append(k)
        out += data[offset : offset + size]
        offset += size
        step += 1
    return bytes(out)


def one_byte_reads(data):
    return bytes(b for byte in data for b in (0, byte))


PING = b'{"type":"ping","requestId":"r1"}'

frame_decoder = {
    "text": bytes([3]) + text("hello"),
    "fragmented-with-ping": bytes([9])
    + text('{"type":', fin=False)
    + frame(9, b"mid")
    + frame(0, b'"ping"}'),
    "binary": bytes([1]) + frame(2, bytes(range(40))),
    "close-with-reason": bytes([4]) + close(1000, b"bye"),
    "close-bad-code": bytes([0]) + close(1005),
    "len16": bytes([2]) + text("x" * 300),
    "len64-over-limit": bytes([10]) + b"\x81\xff" + struct.pack(">Q", 70000) + b"\x01\x02\x03\x04abc",
    "invalid-utf8": bytes([5]) + text(b'{"a":"\xc3\x28"}'),
    "utf8-split-across-fragments": bytes([7])
    + text("caf\xc3".encode("latin-1"), fin=False)
    + frame(0, b"\xa9 \xe2\x82\xac"),
    "unmasked": bytes([2]) + text("hi", masked=False),
    "rsv-bits": bytes([2]) + text("hi", rsv=0x40),
    "ping-too-long": bytes([2]) + frame(9, b"p" * 126),
    "fragmented-ping": bytes([2]) + frame(9, b"p", fin=False),
    "continuation-without-start": bytes([2]) + frame(0, b"orphan"),
    "reserved-opcode": bytes([2]) + frame(3, b""),
    "many-messages-split-in-header": bytes([1]) + text("a") + text("bb") + frame(10, b"") + text("ccc"),
    "garbage": bytes([17]) + bytes((i * 97 + 13) % 256 for i in range(64)),
}

http_request = {
    "get": get("/livez"),
    "head": b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "upgrade": upgrade("/ws", "Origin: https://app.example.com\r\nSec-WebSocket-Protocol: diminuendo.v1, bearer.abc\r\n"),
    "pipelined": get("/livez") + get("/readyz") + get("/health"),
    "http10": b"GET /health HTTP/1.0\r\n\r\n",
    "partial": b"GET /livez HTTP/1.1\r\nHost: te",
    "malformed": b"GET /livez HTTP/1.1\r\nNo colon\r\n\r\n",
    "bad-version": b"GET / HTTP/2.0\r\n\r\n",
    "content-length-conflict": b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "chunked-post": b"POST /livez HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "query": b"GET /ws?token=abc#frag HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n",
    "many-headers": b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(70)) + b"\r\n",
    "tls-hello": bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]),
}

connection = {
    "http-pipelined": bytes([0]) + reads(get("/livez") + get("/readyz") + b"HEAD /health HTTP/1.1\r\n\r\n" + get("/metrics") + get("/nope") + b"POST /livez HTTP/1.1\r\n\r\n"),
    "http-one-byte-reads": bytes([0]) + one_byte_reads(get("/livez")),
    "upgrade-then-frames-same-read": bytes([0]) + reads(upgrade("/ws") + text(PING) + close(1000)),
    "ws-protocol-messages": bytes([2]) + reads(
        text(PING)
        + text("not json")
        + text('{"requestId":7}')
        + text('{"type":"list_sessions","requestId":"l"}')
        + frame(9, b"hi")
        + text('{"type":', fin=False)
        + frame(0, b'"ping"}')
        + close(1000)
    ),
    "ws-not-authenticated": bytes([3]) + reads(
        text('{"type":"list_sessions","requestId":"l"}')
        + text('{"type":"authenticate","token":"abc.def.ghi"}')
        + text(PING)
    ),
    "echo": bytes([6]) + reads(text("echo me") + frame(2, bytes(range(256))) + close(1000)),
    "echo-write-limited": bytes([14]) + reads(text("e" * 3000) + text("f" * 200)),
    "ws-write-limited": bytes([10]) + reads(text(PING) * 8),
    "ws-binary-1003": bytes([2]) + reads(frame(2, b"\x00\x01")),
    "ws-silent-heartbeat": bytes([2]),
    "slow-head": bytes([0]) + one_byte_reads(b"GET /livez HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"a" * 20),
    "refusals": bytes([0]) + reads(get("/ws") + get("/echo", "Content-Length: 5\r\n") + b"hello"),
    "garbage": bytes([2]) + bytes((i * 131 + 7) % 256 for i in range(200)),
}

for target, seeds in [("frame_decoder", frame_decoder), ("http_request", http_request), ("connection", connection)]:
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, f"seed-{name}"), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds")
