// acp-stdio-bridge.mjs as an editor runs it: a child process whose stdin/stdout carry ACP's
// stdio transport, driven here by the SDK's ClientSideConnection over ndJsonStream.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import * as acp from "@agentclientprotocol/sdk";
import { packageDir } from "./gateway.js";

export const BRIDGE = join(packageDir, "acp-stdio-bridge.mjs");
const KILL_AFTER_MS = 30_000;

export function startBridge(url, env = {}) {
  const child = spawn(process.execPath, [BRIDGE, url], {
    cwd: packageDir,
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const stderr = [];
  child.stderr.on("data", (chunk) => stderr.push(chunk));
  const kill = setTimeout(() => child.kill("SIGKILL"), KILL_AFTER_MS);
  const exited = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      clearTimeout(kill);
      resolve({ code, signal });
    }),
  );
  const updates = [];
  const stream = acp.ndJsonStream(Writable.toWeb(child.stdin), Readable.toWeb(child.stdout));
  const conn = new acp.ClientSideConnection(
    () => ({
      async sessionUpdate(params) {
        updates.push(params);
      },
      async requestPermission(params) {
        return { outcome: { outcome: "selected", optionId: params.options[0].optionId } };
      },
    }),
    stream,
  );
  return {
    child,
    conn,
    updates,
    exited,
    stderr: () => Buffer.concat(stderr).toString("utf8"),
    /** Ends stdin (the editor quits) and returns how the bridge exited. */
    async end() {
      child.stdin.end();
      return await exited;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        await exited;
      }
    },
  };
}
