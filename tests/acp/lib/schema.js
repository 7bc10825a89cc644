// The ACP JSON Schema shipped with the SDK (`schema/schema.json`, draft 2020-12), compiled once.
//
// `checkAgentMessage(message, requestMethod?)` returns the list of violations of one message the
// gateway sent on `/acp` (it acts as the ACP *agent* there):
// - the whole message against the schema's `Agent` branch (a request, response or notification
//   an agent may send);
// - a response to a request whose method we know against that method's own result type
//   (`session/prompt` → `PromptResponse`, …), and an error response's `error` against `Error`;
// - `session/update` params against `SessionNotification`, `session/request_permission` params
//   against `RequestPermissionRequest` (the `Agent` branch is an `anyOf` of every params type,
//   so only this catches e.g. an unknown `sessionUpdate` kind next to a valid looking one).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import Ajv2020 from "ajv/dist/2020.js";
import { packageDir } from "./gateway.js";

const schemaPath = join(
  packageDir,
  "node_modules",
  "@agentclientprotocol",
  "sdk",
  "schema",
  "schema.json",
);

const schema = JSON.parse(readFileSync(schemaPath, "utf8"));
schema.$id = "https://agentclientprotocol.com/schema.json";

const ajv = new Ajv2020({ allErrors: true, strict: false });
const integer = (min, max) => ({
  type: "number",
  validate: (value) => Number.isInteger(value) && value >= min && value <= max,
});
ajv.addFormat("int32", integer(-(2 ** 31), 2 ** 31 - 1));
ajv.addFormat("uint16", integer(0, 2 ** 16 - 1));
ajv.addFormat("uint32", integer(0, 2 ** 32 - 1));
ajv.addFormat("int64", integer(Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER));
ajv.addFormat("uint64", integer(0, Number.MAX_SAFE_INTEGER));
ajv.addFormat("double", { type: "number", validate: (value) => Number.isFinite(value) });
ajv.addFormat("uri", (value) => {
  try {
    new URL(value);
    return true;
  } catch {
    return false;
  }
});
ajv.addSchema(schema);

const agentMessage = ajv.compile({
  $ref: `${schema.$id}#/anyOf/0`,
});
const defs = new Map();
function def(name) {
  let validate = defs.get(name);
  if (!validate) {
    validate = ajv.compile({ $ref: `${schema.$id}#/$defs/${name}` });
    defs.set(name, validate);
  }
  return validate;
}

export const RESULT_TYPES = {
  initialize: "InitializeResponse",
  authenticate: "AuthenticateResponse",
  "session/new": "NewSessionResponse",
  "session/load": "LoadSessionResponse",
  "session/list": "ListSessionsResponse",
  "session/resume": "ResumeSessionResponse",
  "session/close": "CloseSessionResponse",
  "session/set_mode": "SetSessionModeResponse",
  "session/set_config_option": "SetSessionConfigOptionResponse",
  "session/prompt": "PromptResponse",
};

const PARAMS_TYPES = {
  "session/update": "SessionNotification",
  "session/request_permission": "RequestPermissionRequest",
};

function explain(label, validate) {
  return (validate.errors ?? [])
    .slice(0, 8)
    .map((error) => `${label}${error.instancePath} ${error.message} ${JSON.stringify(error.params)}`);
}

export function checkAgentMessage(message, requestMethod) {
  const problems = [];
  if (!agentMessage(message)) {
    problems.push(...explain("message", agentMessage));
  }
  if (message === null || typeof message !== "object" || Array.isArray(message)) {
    return problems.length ? problems : ["not a JSON-RPC object"];
  }
  if ("method" in message) {
    const type = PARAMS_TYPES[message.method];
    if (type) {
      const validate = def(type);
      if (!validate(message.params)) problems.push(...explain(`${message.method} params`, validate));
    }
  } else if ("error" in message) {
    const validate = def("Error");
    if (!validate(message.error)) problems.push(...explain("error", validate));
    if ("result" in message) problems.push("a response with both result and error");
  } else if ("result" in message && requestMethod && RESULT_TYPES[requestMethod]) {
    const validate = def(RESULT_TYPES[requestMethod]);
    if (!validate(message.result)) problems.push(...explain(`${requestMethod} result`, validate));
  }
  return problems;
}
