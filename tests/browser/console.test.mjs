// The web console in a real browser: Debian's Chromium (/usr/bin/chromium, or $CHROMIUM) driven by
// playwright-core against the real gateway binary ($DIMINUENDO_BINARY, default
// target/debug/diminuendo-tokio; relative paths are from the repository root). Nothing here
// downloads a browser. Every wait is for a condition on the page (with a timeout), never a sleep.
// Screenshots go to $DIMINUENDO_SCREENSHOTS (the README's are made with
// DIMINUENDO_SCREENSHOTS=docs/screenshots), else target/browser-screenshots.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const binary = resolve(root, process.env.DIMINUENDO_BINARY ?? "target/debug/diminuendo-tokio");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const screenshots = resolve(root, process.env.DIMINUENDO_SCREENSHOTS ?? "target/browser-screenshots");
const TIMEOUT = 20_000;

/** Starts the gateway and resolves once it printed `listening on ADDR`. */
function startGateway(args) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
    const log = [];
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => log.push(chunk));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the gateway did not start in time:\n${log.join("")}`));
    }, 30_000);
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const match = /^listening on (\S+)$/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolvePromise({ child, addr: match[1], log });
      }
    });
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code}) before listening:\n${log.join("")}`));
    });
  });
}

/** Waits for the gateway to exit on its own (SIGKILL after `ms`); resolves with its exit code. */
function waitExit(gateway, ms = 30_000) {
  const { child } = gateway;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolvePromise) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), ms);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolvePromise(code);
    });
  });
}

function killGateway(gateway) {
  if (gateway && gateway.child.exitCode === null && gateway.child.signalCode === null) {
    gateway.child.kill("SIGKILL");
  }
}

async function launch() {
  return chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
}

/** A page that records errors and Content-Security-Policy violations. */
async function openPage(context, url, problems) {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && /Content.Security.Policy/i.test(message.text())) {
      problems.push(`CSP: ${message.text()}`);
    }
  });
  await page.goto(url);
  return page;
}

async function screenshot(page, name) {
  mkdirSync(screenshots, { recursive: true });
  await page.screenshot({ path: join(screenshots, `${name}.png`) });
}

/** The echo agent's `stream N SIZE` text: byte i is 'a' + i % 26. */
function streamText(count, size) {
  let text = "";
  for (let i = 0; i < count * size; i++) text += String.fromCharCode(97 + (i % 26));
  return text;
}

/** Runs `prompt` in the open session and waits for its turn to end; returns the turn's locator. */
async function runTurn(page, prompt, { wait = true } = {}) {
  const before = await page.locator('[data-testid="turn"]').count();
  await page.fill('[data-testid="prompt-input"]', prompt);
  await page.click('[data-testid="run"]');
  const turn = page.locator('[data-testid="turn"]').nth(before);
  await turn.locator('[data-testid="prompt"]').waitFor();
  assert.equal(await turn.locator('[data-testid="prompt"]').textContent(), prompt);
  if (wait) await page.waitForFunction((n) => document.querySelectorAll('[data-testid="turn"]')[n]?.dataset.state === "complete", before);
  return turn;
}

async function agentText(turn) {
  return (await turn.locator('[data-testid="agent-text"]').allTextContents()).join("");
}

function hs256(secret, claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

test("the console in Chromium: sessions, streaming, Markdown, permissions, a restart", async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), "diminuendo-browser-"));
  let gateway;
  let browser;
  const problems = [];
  try {
    gateway = await startGateway(["--dev", "--listen", "127.0.0.1:0", "--data-dir", dataDir]);
    const url = `http://${gateway.addr}/`;
    browser = await launch();
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await openPage(context, url, problems);
    let sessionId;

    await t.test("the page connects in dev mode and shows the user and tenant", async () => {
      await page.waitForSelector('[data-testid="connection"][data-state="open"]');
      assert.equal(await page.textContent('[data-testid="connection"]'), "connected");
      const identity = await page.textContent('[data-testid="identity"]');
      assert.match(identity, /dev-user-001/);
      assert.match(identity, /tenant dev/);
      assert.deepEqual(await page.locator('[data-testid="agent-type"] option').allTextContents(), ["echo"]);
    });

    await t.test("a session is created with the chosen agent type and opened", async () => {
      await page.selectOption('[data-testid="agent-type"]', "echo");
      await page.fill('[data-testid="new-name"]', "Browser test");
      await page.click('[data-testid="create"]');
      await page.waitForSelector('[data-testid="session-item"]:has-text("Browser test")');
      await page.waitForFunction(() => document.querySelector('[data-testid="session-title"]')?.textContent === "Browser test");
      sessionId = /^#\/s\/(.+)$/.exec(await page.evaluate(() => location.hash))?.[1];
      assert.ok(sessionId, "the hash names the session");
      assert.equal(await page.getAttribute('[data-testid="session-item"]', "data-session-id"), sessionId);
    });

    await t.test("`stream 50 8`: all the text renders, exactly once", async () => {
      const turn = await runTurn(page, "stream 50 8");
      assert.equal(await agentText(turn), streamText(50, 8));
      assert.equal(await turn.locator('[data-testid="turn-end"]').textContent(), "ended: end_turn");
      await screenshot(page, "session");
    });

    await t.test("agent output is rendered as Markdown, never as HTML", async () => {
      const prompt = [
        "# Heading",
        "**bold** and `code` and [bad link](javascript:window.__pwned=3) and [good](https://example.com)",
        '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>',
        "",
        "- one",
        "- two",
        "",
        "```html",
        '<iframe src="javascript:window.__pwned=5"></iframe>',
        "```",
      ].join("\n");
      const turn = await runTurn(page, prompt);
      const text = turn.locator('[data-testid="agent-text"]');
      assert.equal(await text.locator("h3").textContent(), "Heading");
      assert.equal(await text.locator("strong").textContent(), "bold");
      assert.equal(await text.locator("p code").textContent(), "code");
      assert.equal(await text.locator("li").count(), 2);
      assert.equal(await text.locator('a[href="https://example.com"]').count(), 1);
      assert.equal(await text.locator("a[href^=javascript]").count(), 0);
      assert.equal(await page.locator('[data-testid="log"] :is(img, script, iframe)').count(), 0);
      assert.equal(
        await text.locator("pre code").textContent(),
        '<iframe src="javascript:window.__pwned=5"></iframe>',
      );
      const rendered = await text.textContent();
      assert.ok(rendered.includes('<img src=x onerror="window.__pwned=1">'), rendered);
      assert.ok(rendered.includes("<script>window.__pwned=2</script>"), rendered);
      assert.ok(rendered.includes("[bad link](javascript:window.__pwned=3)"), rendered);
      assert.equal(await page.evaluate(() => window.__pwned), undefined);
    });

    await t.test("a permission prompt is answered by clicking the agent's option", async () => {
      const turn = await runTurn(page, "permission", { wait: false });
      const question = turn.locator('[data-testid="question"]');
      await question.locator('button[data-option-id="allow"]').waitFor();
      assert.deepEqual(await question.locator("button").allTextContents(), ["Allow", "Reject"]);
      assert.equal(await page.textContent('[data-testid="session-status"]'), "waiting");
      await screenshot(page, "permission");
      await question.locator('button[data-option-id="allow"]').click();
      await page.waitForFunction(() => {
        const turns = document.querySelectorAll('[data-testid="turn"]');
        return turns[turns.length - 1]?.dataset.state === "complete";
      });
      assert.equal(await question.getAttribute("data-state"), "resolved");
      assert.match(await question.locator(".question-result").textContent(), /answered allow by dev-user-001/);
      assert.equal(await agentText(turn), "permission: allow");
      assert.equal(await turn.locator('[data-testid="tool-call"]').getAttribute("data-status"), "pending");
    });

    await t.test("thinking, tool calls with diffs, the plan and usage", async () => {
      const thinking = await runTurn(page, "think about it");
      assert.equal(await thinking.locator('details[data-testid="thinking"]').count(), 1);
      assert.equal(await thinking.locator('details[data-testid="thinking"][open]').count(), 0, "collapsed");
      assert.equal(await thinking.locator(".thinking-text").textContent(), "about it");
      await runTurn(page, "plan");
      assert.deepEqual(
        await page.locator('[data-testid="plan"] li').evaluateAll((items) => items.map((li) => li.dataset.status)),
        ["completed", "in_progress", "pending"],
      );
      await runTurn(page, "usage");
      assert.match(await page.textContent('[data-testid="usage"]'), /1,234 \/ 200,000 tokens/);
      const tools = await runTurn(page, "tools");
      assert.equal(await tools.locator(".tool-output").textContent(), "# Echo\n");
      const diff = await runTurn(page, "diff");
      const call = diff.locator('[data-testid="tool-call"]');
      assert.equal(await call.getAttribute("data-status"), "completed");
      assert.equal(await call.locator('[data-testid="tool-status"]').textContent(), "completed");
      assert.deepEqual(await call.locator(".diff .del").allTextContents(), ["- old"]);
      assert.deepEqual(await call.locator(".diff .add").allTextContents(), ["+ new"]);
      await screenshot(page, "tools");
    });

    await t.test("stop and steer a running turn", async () => {
      const stopped = await runTurn(page, "hang", { wait: false });
      await page.waitForSelector('[data-testid="session-status"]:text("running")');
      await page.click('[data-testid="stop"]');
      await page.waitForFunction(() => {
        const turns = document.querySelectorAll('[data-testid="turn"]');
        return turns[turns.length - 1]?.dataset.state === "complete";
      });
      assert.equal(await stopped.locator('[data-testid="turn-end"]').textContent(), "ended: cancelled");

      const steered = await runTurn(page, "hang", { wait: false });
      await page.waitForSelector('[data-testid="session-status"]:text("running")');
      const before = await page.locator('[data-testid="turn"]').count();
      await page.fill('[data-testid="prompt-input"]', "steered here");
      await page.click('[data-testid="steer"]');
      await page.waitForFunction(
        (n) => document.querySelectorAll('[data-testid="turn"]')[n]?.dataset.state === "complete",
        before,
      );
      assert.equal(await steered.locator('[data-testid="turn-end"]').textContent(), "ended: cancelled");
      assert.equal(await agentText(page.locator('[data-testid="turn"]').nth(before)), "steered here");
    });

    let second;
    await t.test("the session list follows tenant notifications from another tab", async () => {
      second = await openPage(context, `${url}#/s/${sessionId}`, problems);
      await second.waitForSelector('[data-testid="connection"][data-state="open"]');
      await second.waitForFunction(() => document.querySelector('[data-testid="session-title"]')?.textContent === "Browser test");
      // The other tab drew the same conversation from the session's replay.
      const turns = await page.locator('[data-testid="turn"]').count();
      await second.waitForFunction((n) => document.querySelectorAll('[data-testid="turn"][data-state="complete"]').length === n, turns);
      // A name is text too.
      const hostile = '<img src=x onerror="window.__pwned=4">';
      await second.click('[data-testid="rename"]');
      await second.fill('[data-testid="rename-input"]', hostile);
      await second.click('[data-testid="rename-save"]');
      await page.waitForFunction((name) => document.querySelector('[data-testid="session-title"]')?.textContent === name, hostile);
      assert.equal(await page.locator('[data-testid="session-list"] img').count(), 0);
      assert.equal(await page.evaluate(() => window.__pwned), undefined);
      await second.click('[data-testid="rename"]');
      await second.fill('[data-testid="rename-input"]', "Renamed elsewhere");
      await second.click('[data-testid="rename-save"]');
      await page.waitForSelector('[data-testid="session-item"]:has-text("Renamed elsewhere")');
      await page.waitForFunction(() => document.querySelector('[data-testid="session-title"]')?.textContent === "Renamed elsewhere");

      // Created, archived (hidden unless shown), unarchived, deleted: every tab follows.
      await second.fill('[data-testid="new-name"]', "Short-lived");
      await second.click('[data-testid="create"]');
      await page.waitForSelector('[data-testid="session-item"]:has-text("Short-lived")');
      await second.waitForFunction(() => document.querySelector('[data-testid="session-title"]')?.textContent === "Short-lived");
      await second.click('[data-testid="archive"]');
      await page.waitForSelector('[data-testid="session-item"]:has-text("Short-lived")', { state: "detached" });
      await page.check('[data-testid="show-archived"]');
      await page.waitForSelector('[data-testid="session-item"].archived:has-text("Short-lived")');
      await page.uncheck('[data-testid="show-archived"]');
      await second.click('[data-testid="archive"]'); // now "Unarchive"
      await page.waitForSelector('[data-testid="session-item"]:has-text("Short-lived")');
      await second.click('[data-testid="delete"]');
      await second.click('[data-testid="delete"][data-armed]');
      await page.waitForSelector('[data-testid="session-item"]:has-text("Short-lived")', { state: "detached" });
      await second.waitForSelector('[data-testid="session-item"]:has-text("Short-lived")', { state: "detached" });
      assert.equal(await page.locator('[data-testid="session-item"]').count(), 1);
      await second.close();
    });

    await t.test("a gateway restart during a turn: the page reconnects and catches up, no duplicate", async (restartCtx) => {
      await page.evaluate(() => {
        const states = [];
        window.__states = states;
        const indicator = document.querySelector('[data-testid="connection"]');
        new MutationObserver(() => states.push(indicator.dataset.state)).observe(indicator, { attributes: true });
      });
      const slow = await runTurn(page, "slow 20 100", { wait: false });
      await page.waitForFunction(
        (n) => document.querySelectorAll('[data-testid="turn"]')[n]?.textContent.includes("chunk 3 of 20"),
        (await page.locator('[data-testid="turn"]').count()) - 1,
      );
      const port = gateway.addr.split(":").pop();
      // SIGTERM while the turn streams: it may finish within the grace, then every client is told
      // to reconnect.
      gateway.child.kill("SIGTERM");
      await page.waitForSelector('[data-testid="connection"][data-state="reconnecting"]', { timeout: 30_000 });
      // A second signal would exit at once; the drain ends on its own, cleanly.
      assert.equal(await waitExit(gateway), 0, gateway.log.join(""));
      await screenshot(page, "reconnecting");
      gateway = await startGateway(["--dev", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir]);
      assert.equal(gateway.addr, `127.0.0.1:${port}`);

      // Another tab runs a turn at once, likely while the first is still waiting to reconnect.
      const other = await openPage(context, `${url}#/s/${sessionId}`, problems);
      await other.waitForSelector('[data-testid="connection"][data-state="open"]');
      await other.waitForFunction(() => document.querySelector('[data-testid="session-title"]')?.textContent === "Renamed elsewhere");
      await runTurn(other, "stream 30 8");
      // Usually the first tab is still waiting out server_shutdown's reconnectAfterMs (1-5 s)
      // here, so the whole turn reaches it as a replay; either way it must be drawn once.
      const missed = await page.getAttribute('[data-testid="connection"]', "data-state");
      restartCtx.diagnostic(`the first tab was ${missed} when the other tab's turn ended`);
      await other.close();

      await page.waitForSelector('[data-testid="connection"][data-state="open"]', { timeout: 30_000 });
      const turns = page.locator('[data-testid="turn"]');
      const last = turns.last();
      await page.waitForFunction(() => {
        const all = document.querySelectorAll('[data-testid="turn"]');
        return all[all.length - 1]?.dataset.state === "complete" && all[all.length - 1]?.textContent.includes("stream 30 8");
      });
      assert.equal(await last.locator('[data-testid="prompt"]').textContent(), "stream 30 8");
      assert.equal(await agentText(last), streamText(30, 8));
      // The slow turn: every chunk once (it ended within the grace, or was cut by the shutdown).
      const slowText = await agentText(slow);
      for (let i = 1; i <= 20; i++) {
        const count = slowText.split(`chunk ${i} of 20`).length - 1;
        assert.ok(count <= 1, `chunk ${i} drawn ${count} times`);
      }
      assert.ok(slowText.includes("chunk 3 of 20"));
      assert.equal(await slow.getAttribute("data-state") !== "running", true);
      // No turn drawn twice.
      const prompts = await page.locator('[data-testid="prompt"]').allTextContents();
      const counts = new Map();
      for (const prompt of prompts) counts.set(prompt, (counts.get(prompt) ?? 0) + 1);
      for (const [prompt, count] of counts) {
        assert.equal(count, prompt === "hang" ? 2 : 1, `${JSON.stringify(prompt)} drawn ${count} times`);
      }
      assert.equal(prompts.length, 13, `${prompts}`);
      assert.equal(prompts.length, await turns.count());
      const states = await page.evaluate(() => window.__states);
      assert.ok(states.includes("reconnecting"), `${states}`);
      assert.equal(states[states.length - 1], "open", `${states}`);
      await screenshot(page, "after-restart");
    });

    assert.deepEqual(problems, []);
  } finally {
    await browser?.close();
    killGateway(gateway);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test("with authentication, the console asks for a token and shows who signed in", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "diminuendo-browser-auth-"));
  const secret = "a-test-secret-of-at-least-thirty-two-bytes";
  let gateway;
  let browser;
  const problems = [];
  try {
    gateway = await startGateway(["--console", "--jwt-secret", secret, "--listen", "127.0.0.1:0", "--data-dir", dataDir]);
    browser = await launch();
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await openPage(context, `http://${gateway.addr}/`, problems);
    await page.waitForSelector('[data-testid="sign-in"]');
    await screenshot(page, "sign-in");
    await page.fill('[data-testid="token"]', "not.a.token");
    await page.click('[data-testid="sign-in"] button[type="submit"]');
    await page.waitForSelector('[data-testid="sign-in"] .error');

    const token = hs256(secret, {
      sub: "ada",
      tenant_id: "acme",
      role: "admin",
      exp: Math.floor(Date.now() / 1000) + 3600,
    });
    await page.fill('[data-testid="token"]', token);
    await page.click('[data-testid="sign-in"] button[type="submit"]');
    await page.waitForSelector('[data-testid="connection"][data-state="open"]');
    assert.equal(await page.textContent('[data-testid="identity"]'), "ada · tenant acme");
    await page.click('[data-testid="create"]');
    await page.waitForSelector('[data-testid="session-item"]');
    assert.deepEqual(problems, []);
  } finally {
    await browser?.close();
    killGateway(gateway);
    rmSync(dataDir, { recursive: true, force: true });
  }
});
