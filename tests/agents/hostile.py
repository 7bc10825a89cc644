#!/usr/bin/env python3
"""A hostile agent: speaks just enough ACP to take prompts, and on each prompt tries to escape its
sandbox. The prompt text is `probe KEY=VALUE ...` with `other_session`, `own_tenant` and
`other_tenant`. It answers with one line per attempt, `NAME: refused (...)` or
`NAME: ALLOWED (...)`, plus controls that must work (`NAME: ok (...)`).

Its workspace (the current directory) is DATA/sessions/{id}/workspace, so DATA is `../../..`.
"""
import json
import os
import socket
import sys

DATA = os.path.abspath(os.path.join(os.getcwd(), "..", "..", ".."))


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def attempt(name, action):
    """Runs `action`; an OSError means the sandbox refused."""
    try:
        detail = action()
        return f"{name}: ALLOWED ({detail})"
    except OSError as error:
        return f"{name}: refused ({error.__class__.__name__}: {error.strerror})"


def read(path, size=64):
    with open(path, "rb") as f:
        return f"read {len(f.read(size))} bytes of {path}"


def write(path):
    with open(path, "w") as f:
        f.write("hostile\n")
    return f"wrote {path}"


def env_reserved():
    names = [name for name in os.environ if name.startswith("DIMINUENDO_")]
    if names:
        return ",".join(names)
    raise PermissionError(1, "no DIMINUENDO_* variable")


def env_not_inherited():
    if "HOSTILE_SECRET" in os.environ:
        return "HOSTILE_SECRET=" + os.environ["HOSTILE_SECRET"]
    raise PermissionError(1, "HOSTILE_SECRET is not set")


def tcp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    return "opened an AF_INET socket"


def tcp6_socket():
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.close()
    return "opened an AF_INET6 socket"


def process_limit():
    """Forks children that wait on a pipe until one fork fails or 200 are running."""
    read_end, write_end = os.pipe()
    children = []
    failure = None
    try:
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError as error:
                failure = error
                break
            if pid == 0:
                os.close(write_end)
                os.read(read_end, 1)
                os._exit(0)
            children.append(pid)
    finally:
        os.close(write_end)
        os.close(read_end)
        for pid in children:
            os.waitpid(pid, 0)
    if failure is not None:
        raise OSError(failure.errno, f"fork failed after {len(children)} children: {failure.strerror}")
    return f"forked {len(children)} children"


def probe(text):
    params = dict(word.split("=", 1) for word in text.split()[1:] if "=" in word)
    other_session = params.get("other_session", "missing")
    own_tenant = params.get("own_tenant", "missing")
    other_tenant = params.get("other_tenant", "missing")
    parent = os.getppid()
    lines = [
        attempt("env_reserved", env_reserved),
        attempt("env_not_inherited", env_not_inherited),
        attempt("proc_parent_environ", lambda: read(f"/proc/{parent}/environ")),
        attempt("proc_parent_cmdline", lambda: read(f"/proc/{parent}/cmdline")),
        attempt("proc_init_cmdline", lambda: read("/proc/1/cmdline")),
        attempt("proc_self_root_data", lambda: read(f"/proc/self/root{DATA}/sessions/{other_session}/session.db")),
        attempt("list_sessions", lambda: ",".join(os.listdir("../.."))),
        attempt("list_data_dir", lambda: ",".join(os.listdir(DATA))),
        attempt("other_session_db", lambda: read(f"{DATA}/sessions/{other_session}/session.db")),
        attempt("own_tenant_registry", lambda: read(f"{DATA}/tenants/{own_tenant}/registry.db")),
        attempt("other_tenant_registry", lambda: read(f"{DATA}/tenants/{other_tenant}/registry.db")),
        attempt("write_data_root", lambda: write(f"{DATA}/hostile.txt")),
        attempt("write_other_workspace", lambda: write(f"{DATA}/sessions/{other_session}/workspace/hostile.txt")),
        attempt("write_outside_data", lambda: write(os.path.join(DATA, "..", "hostile-outside.txt"))),
        attempt("write_tmp", lambda: write(f"/tmp/diminuendo-hostile-{os.getpid()}.txt")),
        attempt("tcp_socket", tcp_socket),
        attempt("tcp6_socket", tcp6_socket),
        attempt("process_limit", process_limit),
    ]
    # Controls: what the agent must still be able to do, so the refusals above mean something.
    inherited = os.environ.get("HOSTILE_INHERITED", "")
    lines.append(f"control_inherited: {'ok' if inherited == 'yes' else 'MISSING'} (HOSTILE_INHERITED={inherited!r})")
    try:
        write("own-file.txt")
        with open(os.path.join(os.environ.get("TMPDIR", "."), "t"), "w") as f:
            f.write("x")
        lines.append("control_workspace: ok (wrote in the workspace and TMPDIR)")
    except OSError as error:
        lines.append(f"control_workspace: FAILED ({error})")
    try:
        read("/proc/self/status")
        lines.append("control_proc_self: ok (read /proc/self/status)")
    except OSError as error:
        lines.append(f"control_proc_self: FAILED ({error})")
    try:
        a, b = socket.socketpair(socket.AF_UNIX)
        a.close()
        b.close()
        lines.append("control_unix_socket: ok (socketpair)")
    except OSError as error:
        lines.append(f"control_unix_socket: FAILED ({error})")
    return "\n".join(lines)


def main():
    session = "hostile-1"
    linger = False
    for raw in sys.stdin:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        method = message.get("method")
        request_id = message.get("id")
        if request_id is None:
            continue
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": request_id, "result": {
                "protocolVersion": 1,
                "agentCapabilities": {"loadSession": False},
                "authMethods": [],
            }})
        elif method == "session/new":
            send({"jsonrpc": "2.0", "id": request_id, "result": {"sessionId": session}})
        elif method == "session/prompt":
            prompt = message.get("params", {}).get("prompt", [])
            text = " ".join(part.get("text", "") for part in prompt if isinstance(part, dict))
            if text.startswith("probe"):
                report = probe(text)
            elif text.startswith("fill"):
                # Grow the workspace past its quota: `fill BYTES`.
                size = int(text.split()[1])
                with open("filler.bin", "wb") as f:
                    f.write(b"\x01" * size)
                report = f"wrote {size} bytes"
            elif text.startswith("linger"):
                # Outlive the end of stdin: only the parent-death signal ends this agent then.
                linger = True
                report = f"lingering as {os.getpid()}"
            else:
                report = "say `probe ...` or `linger`"
            send({"jsonrpc": "2.0", "method": "session/update", "params": {
                "sessionId": session,
                "update": {"sessionUpdate": "agent_message_chunk",
                           "content": {"type": "text", "text": report}},
            }})
            send({"jsonrpc": "2.0", "id": request_id, "result": {"stopReason": "end_turn"}})
        else:
            send({"jsonrpc": "2.0", "id": request_id,
                  "error": {"code": -32601, "message": "Method not found"}})
    if linger:
        import time
        time.sleep(120)


if __name__ == "__main__":
    main()
