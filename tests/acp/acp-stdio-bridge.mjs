#!/usr/bin/env node
// A stdio ↔ WebSocket bridge for ACP clients that can only start agents as local subprocesses
// (Zed and most editor plugins): it is the "agent" command they run. It reads ACP's stdio
// transport (newline-delimited JSON-RPC) from stdin, sends each message as one WebSocket text
// message to the gateway's /acp, and writes each message it receives as one line to stdout.
//
//   node acp-stdio-bridge.mjs ws://HOST:8080/acp      (or ACP_WS_URL)
//   ACP_TOKEN=<JWT>                                   outside the gateway's dev mode
//
// The token goes in the subprotocol `bearer.<JWT>` next to `acp.v1` (docs/ACP.md), so any
// WebSocket implementation works: Node's own (22 and later) or the `ws` package.
import { createInterface } from "node:readline";

const url = process.argv[2] ?? process.env.ACP_WS_URL ?? "ws://127.0.0.1:8080/acp";
const token = process.env.ACP_TOKEN;
const WebSocketImpl = globalThis.WebSocket ?? (await import("ws")).default;
const protocols = token ? ["acp.v1", `bearer.${token}`] : ["acp.v1"];
const socket = new WebSocketImpl(url, protocols);

const waiting = [];
let open = false;
let stdinEnded = false;

socket.addEventListener("open", () => {
  open = true;
  for (const line of waiting.splice(0)) socket.send(line);
  if (stdinEnded) socket.close(1000);
});
socket.addEventListener("message", (event) => {
  const data = typeof event.data === "string" ? event.data : Buffer.from(event.data).toString("utf8");
  // JSON text never holds a raw newline, so one message is one line.
  process.stdout.write(`${data}\n`);
});
socket.addEventListener("close", (event) => {
  if (event.code !== 1000 && event.code !== 1005) {
    process.stderr.write(`acp-stdio-bridge: ${url} closed ${event.code} ${event.reason}\n`);
  }
  process.exitCode = event.code === 1000 || event.code === 1005 ? 0 : 1;
  process.stdin.destroy();
});
socket.addEventListener("error", (event) => {
  process.stderr.write(`acp-stdio-bridge: ${url}: ${event.message ?? event.error ?? "error"}\n`);
});

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on("line", (line) => {
  if (line.trim() === "") return;
  if (open) socket.send(line);
  else waiting.push(line);
});
lines.on("close", () => {
  stdinEnded = true;
  if (open) socket.close(1000);
});
