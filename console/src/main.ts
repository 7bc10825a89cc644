// The Diminuendo web console: sign-in (skipped in dev mode), the tenant's sessions (live from
// tenant notifications) with create, rename, archive and delete, and a session view with a prompt
// box. Everything goes through @diminuendo/client over ws(s)://<this host>/ws.

import {
  DiminuendoClient,
  GatewayError,
  type ConnectionState,
  type SessionMeta,
  type SessionStream,
} from "../../clients/typescript/src/index.ts";
import { h, clear } from "./dom.ts";
import { SessionView } from "./session-view.ts";

const TOKEN_KEY = "diminuendo.token";
const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;

const STATE_LABELS: Record<ConnectionState, string> = {
  connecting: "connecting…",
  open: "connected",
  reconnecting: "reconnecting…",
  "catching-up": "catching up…",
  closed: "disconnected",
};

interface Opened {
  view: SessionView;
  stream: SessionStream;
}

// ------------------------------------------------------------------ the page's parts

const connection = h("span", { id: "connection", class: "connection", "data-state": "connecting", "data-testid": "connection" }, "connecting…");
const identityLabel = h("span", { id: "identity", class: "identity", "data-testid": "identity" });
const signOutButton = h("button", { class: "link", hidden: true, onclick: () => signOut() }, "sign out");
const banner = h("div", { class: "banner", hidden: true, role: "alert", title: "Click to dismiss", "data-testid": "banner" });
banner.addEventListener("click", () => clearError());

const agentSelect = h("select", { id: "agent-type", "data-testid": "agent-type", "aria-label": "Agent type" });
const newName = h("input", { id: "new-name", type: "text", placeholder: "Session name (optional)", maxlength: 200, "data-testid": "new-name" });
const createButton = h("button", { class: "primary", "data-testid": "create", type: "submit" }, "New session");
const showArchived = h("input", { type: "checkbox", id: "show-archived", "data-testid": "show-archived" });
const sessionList = h("ul", { class: "session-list", "data-testid": "session-list" });

const sessionTitle = h("h2", { class: "session-title", "data-testid": "session-title" });
const sessionMetaLine = h("div", { class: "session-meta", "data-testid": "session-meta" });
const renameButton = h("button", { "data-testid": "rename" }, "Rename");
const archiveButton = h("button", { "data-testid": "archive" }, "Archive");
const deleteButton = h("button", { class: "danger", "data-testid": "delete" }, "Delete");
const sessionHeader = h(
  "div",
  { class: "session-header" },
  h("div", { class: "session-heading" }, sessionTitle, sessionMetaLine),
  h("div", { class: "session-actions" }, renameButton, archiveButton, deleteButton),
);
const viewSlot = h("div", { class: "view-slot" });
const promptBox = h("textarea", {
  id: "prompt",
  rows: 3,
  placeholder: "Prompt the agent (Ctrl+Enter runs; try `stream 50 8`, `permission`, `diff`, `plan`)",
  "data-testid": "prompt-input",
});
const runButton = h("button", { class: "primary", "data-testid": "run" }, "Run");
const steerButton = h("button", { "data-testid": "steer" }, "Steer");
const stopButton = h("button", { class: "danger", "data-testid": "stop" }, "Stop");
const composer = h("form", { class: "composer" }, promptBox, h("div", { class: "composer-actions" }, runButton, steerButton, stopButton));
const sessionPane = h("section", { class: "session-pane", hidden: true, "data-testid": "session-pane" }, sessionHeader, viewSlot, composer);
const emptyPane = h("section", { class: "empty-pane" }, h("p", {}, "Create a session or pick one on the left."));

const app = document.getElementById("app") ?? document.body;

// ------------------------------------------------------------------ state

let client: DiminuendoClient | null = null;
const sessions = new Map<string, SessionMeta>();
const opened = new Map<string, Opened>();
let selected: string | null = null;

function showError(error: unknown): void {
  const text = error instanceof GatewayError ? `${error.code}: ${error.message}` : error instanceof Error ? error.message : String(error);
  banner.textContent = text;
  banner.hidden = false;
}

function clearError(): void {
  banner.hidden = true;
  banner.textContent = "";
}

// ------------------------------------------------------------------ sign-in

function showSignIn(message?: string): void {
  const token = h("textarea", { id: "token", rows: 4, placeholder: "eyJhbGciOi…", "data-testid": "token", "aria-label": "Token" });
  const form = h(
    "form",
    { class: "sign-in", "data-testid": "sign-in" },
    h("h1", {}, "Sign in to Diminuendo"),
    h("p", {}, "This gateway needs a token (a JWT its operator issued)."),
    message ? h("p", { class: "error" }, message) : null,
    token,
    h("button", { class: "primary", type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = token.value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    void start(value);
  });
  app.replaceChildren(form);
  token.focus();
}

function signOut(): void {
  sessionStorage.removeItem(TOKEN_KEY);
  client?.close();
  client = null;
  showSignIn();
}

// ------------------------------------------------------------------ the console

function layout(): void {
  const createForm = h(
    "form",
    { class: "create", "data-testid": "create-form" },
    h("label", {}, "Agent ", agentSelect),
    newName,
    createButton,
  );
  createForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void createSession();
  });
  app.replaceChildren(
    h(
      "header",
      { class: "top" },
      h("span", { class: "brand" }, "Diminuendo"),
      h("span", { class: "spacer" }),
      identityLabel,
      signOutButton,
      connection,
    ),
    banner,
    h(
      "main",
      { class: "main" },
      h(
        "aside",
        { class: "sidebar" },
        createForm,
        h("label", { class: "archived-toggle" }, showArchived, " show archived"),
        sessionList,
      ),
      emptyPane,
      sessionPane,
    ),
  );
}

async function loadAgentTypes(): Promise<void> {
  let types = ["echo"];
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const health = (await response.json()) as { agents?: Record<string, unknown> };
    if (health.agents && Object.keys(health.agents).length > 0) types = Object.keys(health.agents).sort();
  } catch {
    // Keep the default agent type.
  }
  agentSelect.replaceChildren(...types.map((type) => h("option", { value: type }, type)));
}

async function start(token?: string): Promise<void> {
  layout();
  void loadAgentTypes();
  const next = new DiminuendoClient({ url: () => wsUrl, ...(token ? { token } : {}) });
  client = next;
  next.on("state", (state) => {
    connection.dataset.state = state;
    connection.textContent = STATE_LABELS[state] ?? state;
  });
  next.on("authenticated", (who) => {
    identityLabel.textContent = `${who.userId} · tenant ${who.tenantId}`;
    signOutButton.hidden = !token;
    void refreshSessions();
  });
  next.on("session_created", (meta) => upsertSession(meta));
  next.on("session_updated", (meta) => upsertSession(meta));
  next.on("session_deleted", (id) => removeSession(id));
  next.on("error", (error) => {
    if (isAuthError(error)) {
      refuseToken(next, token, error);
      return;
    }
    showError(error);
  });
  try {
    await next.connect();
  } catch (error) {
    if (isAuthError(error)) refuseToken(next, token, error);
    else showError(error);
  }
}

/** The gateway wants a token (`NOT_AUTHENTICATED`) or refused the one given. */
function isAuthError(error: unknown): error is GatewayError {
  return (
    error instanceof GatewayError &&
    (error.code === "NOT_AUTHENTICATED" || error.code === "AUTH_FAILED" || error.code === "AUTH_RATE_LIMITED")
  );
}

function refuseToken(current: DiminuendoClient, token: string | undefined, error: GatewayError): void {
  if (client !== current) return;
  current.close();
  client = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn(token ? `The gateway refused the token (${error.code}): ${error.message}` : undefined);
}

async function refreshSessions(): Promise<void> {
  if (!client) return;
  try {
    const list = await client.listSessions({ includeArchived: true });
    sessions.clear();
    for (const meta of list) sessions.set(meta.id, meta);
    drawSessions();
    routeFromHash();
  } catch (error) {
    showError(error);
  }
}

function upsertSession(meta: SessionMeta): void {
  sessions.set(meta.id, meta);
  drawSessions();
  if (meta.id === selected) drawSessionHeader();
}

function removeSession(id: string): void {
  sessions.delete(id);
  opened.delete(id);
  drawSessions();
  if (selected === id) select(null);
}

function drawSessions(): void {
  const list = [...sessions.values()]
    .filter((meta) => showArchived.checked || !meta.archived)
    .sort((a, b) => b.createdAt - a.createdAt);
  clear(sessionList);
  if (list.length === 0) {
    sessionList.appendChild(h("li", { class: "none" }, "No sessions yet."));
    return;
  }
  for (const meta of list) {
    const item = h(
      "li",
      {
        class: `session-item${meta.id === selected ? " selected" : ""}${meta.archived ? " archived" : ""}`,
        "data-session-id": meta.id,
        "data-status": meta.status,
        "data-testid": "session-item",
      },
      h("a", { href: `#/s/${meta.id}`, class: "session-link" }, h("span", { class: "session-name" }, meta.name)),
      h("span", { class: `badge status-${meta.status}` }, meta.status),
      h("span", { class: "agent" }, meta.agentType),
    );
    sessionList.appendChild(item);
  }
}

function drawSessionHeader(): void {
  const meta = selected ? sessions.get(selected) : undefined;
  if (!meta) return;
  sessionTitle.textContent = meta.name;
  document.title = `${meta.name} · Diminuendo`;
  sessionMetaLine.replaceChildren(
    h("span", { class: `badge status-${meta.status}`, "data-testid": "session-status" }, meta.status),
    ` ${meta.agentType} · ${meta.id}`,
    meta.archived ? " · archived" : "",
  );
  archiveButton.textContent = meta.archived ? "Unarchive" : "Archive";
  const busy = meta.status === "running" || meta.status === "waiting";
  runButton.disabled = false;
  steerButton.disabled = !busy;
  stopButton.disabled = !busy;
  composer.dataset.status = meta.status;
}

function routeFromHash(): void {
  const match = /^#\/s\/([\w-]+)$/.exec(location.hash);
  const id = match?.[1] ?? null;
  // A session deleted meanwhile (e.g. while reconnecting) is no longer shown.
  select(id && sessions.has(id) ? id : null);
}

function select(id: string | null): void {
  selected = id;
  drawSessions();
  if (!id || !client) {
    document.title = "Diminuendo console";
    sessionPane.hidden = true;
    emptyPane.hidden = false;
    viewSlot.replaceChildren();
    return;
  }
  emptyPane.hidden = true;
  sessionPane.hidden = false;
  drawSessionHeader();
  let entry = opened.get(id);
  if (!entry) {
    entry = openSession(client, id);
    opened.set(id, entry);
  }
  viewSlot.replaceChildren(entry.view.element);
  entry.view.element.scrollIntoView({ block: "end" });
}

function openSession(current: DiminuendoClient, id: string): Opened {
  const view = new SessionView(id, (questionId, optionId) => current.answerQuestion(id, questionId, optionId));
  const stream = current.session(id);
  stream.on("event", (event) => {
    view.apply(event);
    if (selected === id) viewSlot.scrollTop = viewSlot.scrollHeight;
  });
  stream.on("reload", () => {
    void stream
      .reload()
      .then((events) => {
        view.reset();
        for (const event of events) view.apply(event);
      })
      .catch(showError);
  });
  stream.on("error", (error) => {
    if (sessions.has(id)) showError(error);
  });
  const meta = sessions.get(id);
  stream.join(meta ? { afterSeq: 0, epoch: meta.epoch } : { afterSeq: 0 }).catch(showError);
  return { view, stream };
}

// ------------------------------------------------------------------ actions

async function createSession(): Promise<void> {
  if (!client) return;
  clearError();
  createButton.disabled = true;
  try {
    const name = newName.value.trim();
    const meta = await client.createSession({ agentType: agentSelect.value || "echo", ...(name ? { name } : {}) });
    newName.value = "";
    upsertSession(meta);
    location.hash = `#/s/${meta.id}`;
  } catch (error) {
    showError(error);
  } finally {
    createButton.disabled = false;
  }
}

async function act(action: (client: DiminuendoClient, id: string) => Promise<unknown>): Promise<void> {
  if (!client || !selected) return;
  clearError();
  try {
    await action(client, selected);
  } catch (error) {
    showError(error);
  }
}

renameButton.addEventListener("click", () => {
  const meta = selected ? sessions.get(selected) : undefined;
  if (!meta) return;
  const input = h("input", { type: "text", value: meta.name, maxlength: 200, "data-testid": "rename-input", "aria-label": "New name" });
  const form = h(
    "form",
    { class: "rename" },
    input,
    h("button", { class: "primary", type: "submit", "data-testid": "rename-save" }, "Save"),
    h("button", { type: "button", onclick: () => form.replaceWith(sessionTitle) }, "Cancel"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = input.value.trim();
    form.replaceWith(sessionTitle);
    if (name && name !== meta.name) void act((c, id) => c.renameSession(id, name).then(upsertSession));
  });
  sessionTitle.replaceWith(form);
  input.select();
});

archiveButton.addEventListener("click", () => {
  const meta = selected ? sessions.get(selected) : undefined;
  if (!meta) return;
  void act((c, id) => (meta.archived ? c.unarchiveSession(id) : c.archiveSession(id)).then(upsertSession));
});

let deleteArmed = 0;
deleteButton.addEventListener("click", () => {
  if (deleteArmed === 0) {
    deleteButton.textContent = "Confirm delete";
    deleteButton.dataset.armed = "true";
    deleteArmed = window.setTimeout(() => {
      deleteArmed = 0;
      deleteButton.textContent = "Delete";
      delete deleteButton.dataset.armed;
    }, 4000);
    return;
  }
  window.clearTimeout(deleteArmed);
  deleteArmed = 0;
  deleteButton.textContent = "Delete";
  delete deleteButton.dataset.armed;
  const id = selected;
  void act((c) => c.deleteSession(id ?? "")).then(() => {
    if (id) removeSession(id);
    location.hash = "";
  });
});

function send(kind: "run" | "steer"): void {
  const text = promptBox.value;
  if (!text.trim()) return;
  void act(async (c, id) => {
    await (kind === "run" ? c.runTurn(id, text) : c.steer(id, text));
    promptBox.value = "";
  });
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send("run");
});
runButton.addEventListener("click", (event) => {
  event.preventDefault();
  send("run");
});
steerButton.addEventListener("click", (event) => {
  event.preventDefault();
  send("steer");
});
stopButton.addEventListener("click", (event) => {
  event.preventDefault();
  void act((c, id) => c.stopTurn(id));
});
promptBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    const meta = selected ? sessions.get(selected) : undefined;
    send(meta && (meta.status === "running" || meta.status === "waiting") ? "steer" : "run");
  }
});
showArchived.addEventListener("change", drawSessions);
window.addEventListener("hashchange", routeFromHash);

// ------------------------------------------------------------------ boot

/** Connects with the token of this tab's earlier sign-in, or none (dev mode); a gateway that
 * needs a token answers `NOT_AUTHENTICATED`, and the sign-in form is shown. */
async function boot(): Promise<void> {
  await start(sessionStorage.getItem(TOKEN_KEY) ?? undefined);
}

void boot();
