// The promise of a remote agent: the session outlives the editor and the gateway. An ACP client
// runs a turn and goes away; the session's agent is stopped when idle, or the whole gateway is
// restarted; a new ACP client loads the session with its history and the agent remembers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway } from "../lib/gateway.js";
import { connectAcp, connectWs, agentText, normalizeUpdates } from "../lib/acp.js";

const of = (client, sessionId) => client.updates.filter((u) => u.sessionId === sessionId);

test("after an idle deactivation the session loads with its history and its agent remembers", async () => {
  const gateway = await startGateway(["--dev", "--idle-session-timeout-ms", "300"]);
  try {
    // A /ws client that joins nothing sees the tenant's session_updated broadcasts.
    const watcher = await connectWs(gateway);
    const a = connectAcp(gateway);
    await a.initialize();
    const { sessionId } = await a.conn.newSession({ cwd: "/tmp", mcpServers: [] });
    await a.conn.prompt({ sessionId, prompt: [{ type: "text", text: "remember the lighthouse" }] });
    const live = of(a, sessionId);
    await a.close();
    await watcher.until(
      (r) => r.messages.some((m) => m.type === "session_updated" && m.session?.id === sessionId && m.session.status === "inactive"),
      "the session to go inactive",
    );
    const b = connectAcp(gateway);
    await b.initialize();
    await b.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
    assert.deepEqual(normalizeUpdates(of(b, sessionId)), normalizeUpdates(live));
    const before = b.updates.length;
    const result = await b.conn.prompt({ sessionId, prompt: [{ type: "text", text: "recall" }] });
    assert.equal(result.stopReason, "end_turn");
    const recalled = agentText(b.updates.slice(before));
    assert.ok(recalled.includes("1. remember the lighthouse"), recalled);
    await b.close();
    await watcher.close();
  } finally {
    await gateway.stop();
  }
});

test("after a gateway restart the session is listed and loads with its history", async () => {
  const first = await startGateway(["--dev"]);
  let dir;
  let sessionId;
  let live;
  try {
    const a = connectAcp(first);
    await a.initialize();
    sessionId = (await a.conn.newSession({ cwd: "/tmp", mcpServers: [] })).sessionId;
    for (const text of ["before the restart", "tools"]) {
      assert.equal((await a.conn.prompt({ sessionId, prompt: [{ type: "text", text }] })).stopReason, "end_turn");
    }
    live = of(a, sessionId);
    await a.close();
  } finally {
    dir = await first.stopKeepingData();
  }
  const second = await startGateway(["--dev"], {}, dir);
  try {
    const b = connectAcp(second);
    await b.initialize();
    const listed = await b.conn.listSessions({});
    assert.ok(listed.sessions.some((s) => s.sessionId === sessionId), JSON.stringify(listed));
    await b.conn.loadSession({ sessionId, cwd: "/tmp", mcpServers: [] });
    assert.deepEqual(normalizeUpdates(of(b, sessionId)), normalizeUpdates(live));
    const before = b.updates.length;
    await b.conn.prompt({ sessionId, prompt: [{ type: "text", text: "recall" }] });
    const recalled = agentText(b.updates.slice(before));
    assert.ok(recalled.includes("1. before the restart"), recalled);
    await b.close();
  } finally {
    await second.stop();
  }
});
