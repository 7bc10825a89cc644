#!/usr/bin/env python3
"""An ACP agent that uses the client file system (`fs/read_text_file`, `fs/write_text_file`)
instead of its own. Each line of a prompt is one operation:

    read PATH [LINE [LIMIT]]
    write PATH TEXT...

A PATH that does not start with `/` is taken relative to the session's `cwd`. For each operation
it sends the request to the client, waits for the answer, and reports one line as a message
chunk: `read PATH: ok <content as JSON>`, `write PATH: ok`, or `OP PATH: error CODE MESSAGE`. It
also reports whether the client advertised the capabilities: `capabilities: read=.. write=..`.
"""
import json
import os
import sys

SESSION = "fs-agent-1"
state = {"cwd": os.getcwd(), "fs": {}, "next_id": 1000}


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def read_message():
    for raw in sys.stdin:
        try:
            return json.loads(raw)
        except ValueError:
            continue
    return None


def ask(method, params):
    """Sends a request to the client and returns its answer (skipping anything else)."""
    state["next_id"] += 1
    request_id = state["next_id"]
    send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
    while True:
        message = read_message()
        if message is None:
            sys.exit(0)
        if message.get("id") == request_id and "method" not in message:
            return message


def absolute(path):
    return path if path.startswith("/") else os.path.join(state["cwd"], path)


def operation(line):
    words = line.split(" ")
    op, path = words[0], words[1]
    if op == "read":
        params = {"sessionId": SESSION, "path": absolute(path)}
        if len(words) > 2:
            params["line"] = int(words[2])
        if len(words) > 3:
            params["limit"] = int(words[3])
        answer = ask("fs/read_text_file", params)
    else:
        content = " ".join(words[2:])
        answer = ask("fs/write_text_file",
                     {"sessionId": SESSION, "path": absolute(path), "content": content})
    if "error" in answer:
        error = answer["error"]
        return f"{op} {path}: error {error.get('code')} {error.get('message')}"
    if op == "read":
        return f"{op} {path}: ok {json.dumps(answer['result'].get('content'))}"
    return f"{op} {path}: ok"


def main():
    while True:
        message = read_message()
        if message is None:
            return
        method = message.get("method")
        request_id = message.get("id")
        if request_id is None:
            continue
        if method == "initialize":
            state["fs"] = message.get("params", {}).get("clientCapabilities", {}).get("fs", {})
            send({"jsonrpc": "2.0", "id": request_id, "result": {
                "protocolVersion": 1, "agentCapabilities": {}, "authMethods": []}})
        elif method == "session/new":
            state["cwd"] = message.get("params", {}).get("cwd", state["cwd"])
            send({"jsonrpc": "2.0", "id": request_id, "result": {"sessionId": SESSION}})
        elif method == "session/prompt":
            prompt = message.get("params", {}).get("prompt", [])
            text = "".join(part.get("text", "") for part in prompt if isinstance(part, dict))
            fs = state["fs"]
            lines = [f"capabilities: read={fs.get('readTextFile')} write={fs.get('writeTextFile')}"]
            for line in text.split("\n"):
                if line.strip():
                    lines.append(operation(line.strip()))
            send({"jsonrpc": "2.0", "method": "session/update", "params": {
                "sessionId": SESSION,
                "update": {"sessionUpdate": "agent_message_chunk",
                           "content": {"type": "text", "text": "\n".join(lines) + "\n"}},
            }})
            send({"jsonrpc": "2.0", "id": request_id, "result": {"stopReason": "end_turn"}})
        else:
            send({"jsonrpc": "2.0", "id": request_id,
                  "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
