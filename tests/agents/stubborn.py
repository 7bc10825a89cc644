#!/usr/bin/env python3
"""A misbehaving ACP agent for the turn-end tests (issue 13). It answers the handshake, and each
`session/prompt` by its text:

- `hang`: never answers the prompt, ignores `session/cancel`, and ignores SIGTERM, so only a
  SIGKILL ends it;
- `error-on-cancel`: answers nothing until `session/cancel`, then answers the prompt with a
  JSON-RPC error;
- anything else: one text chunk `pid N` (its process id) and `end_turn`.
"""
import json
import os
import signal
import sys

signal.signal(signal.SIGTERM, signal.SIG_IGN)


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


waiting = None  # the id of a prompt that fails when it is cancelled
hung = False

for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    method = message.get("method")
    ident = message.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": ident,
              "result": {"protocolVersion": 1, "agentCapabilities": {}}})
    elif method == "session/new":
        send({"jsonrpc": "2.0", "id": ident, "result": {"sessionId": "stubborn"}})
    elif method == "session/prompt":
        params = message.get("params", {})
        text = "".join(block.get("text", "") for block in params.get("prompt", []))
        if text == "hang":
            hung = True
            continue
        if text == "error-on-cancel":
            waiting = ident
            continue
        send({"jsonrpc": "2.0", "method": "session/update",
              "params": {"sessionId": params.get("sessionId"),
                         "update": {"sessionUpdate": "agent_message_chunk",
                                    "content": {"type": "text", "text": f"pid {os.getpid()}"}}}})
        send({"jsonrpc": "2.0", "id": ident, "result": {"stopReason": "end_turn"}})
    elif method == "session/cancel" and waiting is not None:
        send({"jsonrpc": "2.0", "id": waiting,
              "error": {"code": -32603, "message": "Internal error",
                        "data": {"details": "the turn was aborted"}}})
        waiting = None
# stdin closed: a hung agent stays until it is killed.
while hung:
    signal.pause()
