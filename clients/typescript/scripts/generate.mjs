#!/usr/bin/env node
// Generates src/generated/protocol.ts from the gateway's JSON Schema (docs/protocol.schema.json).
//
//   node scripts/generate.mjs           write the file
//   node scripts/generate.mjs --check   regenerate in memory; exit 1 when the committed file differs
//
// A small generator of our own rather than a general one: the schema's unions are discriminated
// on `type` (a `const` per variant, often beside a `$ref` to the variant's fields), and each
// variant becomes a named interface (`TextDeltaEvent`, `SessionJoinedReply`, …) so that a
// `switch (message.type)` narrows. No dependencies: it runs before anything is installed.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const schemaPath = resolve(here, "../../../docs/protocol.schema.json");
const outputPath = resolve(here, "../src/generated/protocol.ts");

export function generate(schema) {
  const defs = schema.$defs ?? {};
  const out = [];
  const emit = (line = "") => out.push(line);

  // Unions discriminated on `type`: every variant names its `type` as a const.
  const isDiscriminated = (def) =>
    Array.isArray(def.oneOf) &&
    def.oneOf.length > 0 &&
    def.oneOf.every((variant) => variant.properties?.type?.const !== undefined);
  const isConstUnion = (def) =>
    Array.isArray(def.oneOf) && def.oneOf.every((variant) => variant.const !== undefined);

  const pascal = (text) =>
    text
      .split(/[_\s-]+/)
      .filter(Boolean)
      .map((word) => word[0].toUpperCase() + word.slice(1))
      .join("");
  const suffixOf = (name) => name.match(/[A-Z][a-z0-9]*$/)?.[0] ?? name;
  const variantName = (unionName, variant) =>
    pascal(String(variant.properties.type.const)) + suffixOf(unionName);

  // A def whose name a variant takes keeps its fields under `<Name>Fields`.
  const variantNames = new Set();
  for (const [name, def] of Object.entries(defs)) {
    if (isDiscriminated(def)) {
      for (const variant of def.oneOf) variantNames.add(variantName(name, variant));
    }
  }
  const defName = (name) => (variantNames.has(name) ? `${name}Fields` : name);
  const refName = (ref) => {
    const match = /^#\/\$defs\/(.+)$/.exec(ref);
    if (!match || !(match[1] in defs)) throw new Error(`unsupported $ref ${ref}`);
    return defName(match[1]);
  };

  const doc = (description, indent) => {
    if (!description) return [];
    const lines = String(description).replace(/\*\//g, "*\\/").split("\n");
    if (lines.length === 1) return [`${indent}/** ${lines[0]} */`];
    return [`${indent}/**`, ...lines.map((line) => `${indent} *${line ? " " + line : ""}`), `${indent} */`];
  };

  const propertyKey = (key) => (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? key : JSON.stringify(key));

  // The members of an object schema, one per line, `type` first.
  const members = (schema, indent) => {
    const required = new Set(schema.required ?? []);
    const keys = Object.keys(schema.properties ?? {});
    keys.sort((a, b) => (a === "type" ? -1 : b === "type" ? 1 : 0));
    const lines = [];
    for (const key of keys) {
      const property = schema.properties[key];
      lines.push(...doc(property.description, indent));
      const optional = required.has(key) ? "" : "?";
      lines.push(`${indent}${propertyKey(key)}${optional}: ${typeOf(property, indent)};`);
    }
    return lines;
  };

  const objectLiteral = (schema, indent) => {
    const inner = members(schema, indent + "  ");
    if (inner.length === 0) return "Record<string, unknown>";
    return `{\n${inner.join("\n")}\n${indent}}`;
  };

  const union = (types) => {
    const unique = [...new Set(types)];
    if (unique.includes("unknown")) return "unknown";
    return unique.join(" | ");
  };
  // Parenthesized when a `|` or `&` sits outside every bracket (before `[]` or inside `&`).
  const wrap = (type) => {
    let depth = 0;
    for (const char of type) {
      if ("{([<".includes(char)) depth += 1;
      else if ("})]>".includes(char)) depth -= 1;
      else if (depth === 0 && (char === "|" || char === "&")) return `(${type})`;
    }
    return type;
  };

  function typeOf(schema, indent = "") {
    if (schema === true || schema === undefined) return "unknown";
    if (schema === false) return "never";
    const parts = [];
    if (schema.$ref) {
      const base = refName(schema.$ref);
      const extra = schema.properties ? objectLiteral(schema, indent) : undefined;
      return extra ? `${base} & ${extra}` : base;
    }
    if (schema.const !== undefined) return JSON.stringify(schema.const);
    if (Array.isArray(schema.enum)) return union(schema.enum.map((value) => JSON.stringify(value)));
    if (Array.isArray(schema.allOf)) return schema.allOf.map((part) => wrap(typeOf(part, indent))).join(" & ");
    const alternatives = schema.oneOf ?? schema.anyOf;
    if (Array.isArray(alternatives)) return union(alternatives.map((part) => typeOf(part, indent)));
    const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
    if (types.length === 0) return "unknown";
    for (const type of types) {
      switch (type) {
        case "null":
          parts.push("null");
          break;
        case "string":
          parts.push("string");
          break;
        case "integer":
        case "number":
          parts.push("number");
          break;
        case "boolean":
          parts.push("boolean");
          break;
        case "array":
          parts.push(`${wrap(typeOf(schema.items, indent))}[]`);
          break;
        case "object":
          parts.push(objectLiteral(schema, indent));
          break;
        default:
          throw new Error(`unsupported type ${type}`);
      }
    }
    return union(parts);
  }

  const constName = (name) => name.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();

  emit("// Generated by scripts/generate.mjs from docs/protocol.schema.json: do not edit.");
  emit("// Regenerate with `npm run generate`; `npm run check-generated` fails while this file is stale.");
  emit("/* eslint-disable */");
  emit();
  emit(...doc(schema.description, ""));
  if (Array.isArray(schema.oneOf)) {
    emit(`export type DiminuendoProtocol = ${union(schema.oneOf.map((part) => typeOf(part)))};`);
    emit();
  }

  for (const name of Object.keys(defs).sort()) {
    const def = defs[name];
    const typeName = defName(name);
    if (isDiscriminated(def)) {
      const names = [];
      for (const variant of def.oneOf) {
        const vName = variantName(name, variant);
        names.push(vName);
        out.push(...doc(variant.description, ""));
        const base = variant.$ref ? ` extends ${refName(variant.$ref)}` : "";
        emit(`export interface ${vName}${base} {`);
        out.push(...members(variant, "  "));
        emit("}");
        emit();
      }
      out.push(...doc(def.description, ""));
      emit(`export type ${typeName} =`);
      names.forEach((vName, index) => emit(`  | ${vName}${index === names.length - 1 ? ";" : ""}`));
      emit();
      emit(`/** Every \`type\` of {@link ${typeName}}. */`);
      emit(`export const ${constName(typeName)}_TYPES = [`);
      for (const variant of def.oneOf) emit(`  ${JSON.stringify(variant.properties.type.const)},`);
      emit("] as const;");
      emit();
    } else if (isConstUnion(def)) {
      out.push(...doc(def.description, ""));
      emit(`export type ${typeName} =`);
      def.oneOf.forEach((variant, index) => {
        out.push(...doc(variant.description, "  "));
        emit(`  | ${JSON.stringify(variant.const)}${index === def.oneOf.length - 1 ? ";" : ""}`);
      });
      emit();
      emit(`/** Every {@link ${typeName}}. */`);
      emit(`export const ${constName(typeName)}S = [`);
      for (const variant of def.oneOf) emit(`  ${JSON.stringify(variant.const)},`);
      emit("] as const;");
      emit();
    } else if (def.type === "object" && def.properties && !def.oneOf && !def.anyOf && !def.allOf) {
      out.push(...doc(def.description, ""));
      emit(`export interface ${typeName} {`);
      out.push(...members(def, "  "));
      emit("}");
      emit();
    } else {
      out.push(...doc(def.description, ""));
      emit(`export type ${typeName} = ${typeOf(def)};`);
      emit();
    }
  }
  return out.join("\n").replace(/\n+$/, "\n");
}

function main() {
  const schema = JSON.parse(readFileSync(schemaPath, "utf8"));
  const text = generate(schema);
  if (process.argv.includes("--check")) {
    let committed = "";
    try {
      committed = readFileSync(outputPath, "utf8");
    } catch {
      // a missing file is stale
    }
    if (committed !== text) {
      console.error(
        "src/generated/protocol.ts is stale: docs/protocol.schema.json changed. Run `npm run generate` in clients/typescript and commit the result.",
      );
      process.exit(1);
    }
    console.log("src/generated/protocol.ts is up to date with docs/protocol.schema.json");
    return;
  }
  mkdirSync(dirname(outputPath), { recursive: true });
  writeFileSync(outputPath, text);
  console.log(`wrote ${outputPath}`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
