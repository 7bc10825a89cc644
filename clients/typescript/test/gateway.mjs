// Starts a real gateway binary for the tests and stops it by its PID.
import { spawn } from "node:child_process";
import net from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The binary under test: `DIMINUENDO_BIN`, else the workspace's debug tokio binary. */
export const binary = process.env.DIMINUENDO_BIN ?? join(repo, "target/debug/diminuendo-tokio");

/** A fresh data directory (removed by `removeDataDir`). */
export function makeDataDir() {
  return mkdtempSync(join(tmpdir(), "diminuendo-client-test-"));
}

export function removeDataDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Starts the gateway (in dev mode unless `dev: false`) on `listen` (default a free loopback port) with `dataDir`, and
 * resolves once it printed `listening on ADDR` (within `timeoutMs`).
 */
export function startGateway({ dataDir, listen = "127.0.0.1:0", args = [], dev = true, timeoutMs = 30_000 }) {
  const mode = dev ? ["--dev"] : [];
  const child = spawn(binary, [...mode, "--listen", listen, "--data-dir", join(dataDir, "data"), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stderr.on("data", (chunk) => {
    log += chunk;
    if (log.length > 200_000) log = log.slice(-100_000);
  });
  const exited = new Promise((resolveExit) => child.once("exit", (code, signal) => resolveExit({ code, signal })));
  const gateway = {
    child,
    pid: child.pid,
    exited,
    log: () => log,
    address: undefined,
    url: undefined,
    /** Sends `signal` to the process (by its PID) and resolves with its exit. */
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, signal);
      return exited;
    },
  };
  return new Promise((resolveStart, rejectStart) => {
    let out = "";
    const timer = setTimeout(() => {
      gateway.stop("SIGKILL");
      rejectStart(new Error(`${binary} printed no listening line in ${timeoutMs} ms; log:\n${log}`));
    }, timeoutMs);
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const match = /listening on (\S+)/.exec(out);
      if (match && !gateway.address) {
        clearTimeout(timer);
        gateway.address = match[1];
        gateway.url = `ws://${match[1]}/ws`;
        resolveStart(gateway);
      }
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      rejectStart(error);
    });
    exited.then(({ code, signal }) => {
      if (!gateway.address) {
        clearTimeout(timer);
        rejectStart(new Error(`${binary} exited (${code ?? signal}) before listening; log:\n${log}`));
      }
    });
  });
}

/** Resolves once `predicate()` is true (checked after every `emitter` event), or rejects after `timeoutMs`. */
export function waitFor(predicate, { timeoutMs = 20_000, what = "a condition", poll = 20 } = {}) {
  return new Promise((resolveWait, rejectWait) => {
    const deadline = Date.now() + timeoutMs;
    const check = () => {
      let ok = false;
      try {
        ok = predicate();
      } catch (error) {
        rejectWait(error);
        return;
      }
      if (ok) resolveWait();
      else if (Date.now() > deadline) rejectWait(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      else setTimeout(check, poll);
    };
    check();
  });
}

/**
 * A TCP proxy on loopback in front of `address` whose connections the test can cut (a network
 * drop the gateway does not cause) and refuse for a while.
 */
export function startProxy(address) {
  const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];
  const sockets = new Set();
  let refusing = false;
  const server = net.createServer((downstream) => {
    if (refusing) {
      downstream.destroy();
      return;
    }
    const upstream = net.connect(port, host);
    sockets.add(downstream);
    sockets.add(upstream);
    const drop = () => {
      downstream.destroy();
      upstream.destroy();
      sockets.delete(downstream);
      sockets.delete(upstream);
    };
    downstream.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    downstream.pipe(upstream);
    upstream.pipe(downstream);
  });
  return new Promise((resolveProxy) => {
    server.listen(0, "127.0.0.1", () => {
      const { port: proxyPort } = server.address();
      resolveProxy({
        url: `ws://127.0.0.1:${proxyPort}/ws`,
        /** Drops every connection at once, without a close frame. */
        cut() {
          for (const socket of sockets) socket.destroy();
          sockets.clear();
        },
        refuse(value) {
          refusing = value;
        },
        close() {
          this.cut();
          return new Promise((done) => server.close(() => done()));
        },
      });
    });
  });
}
