// The Markdown renderer (src/markdown.ts) in Node, on a minimal DOM: what it builds for ordinary
// Markdown, and that no input, however hostile, yields an element outside a fixed set, an
// attribute outside a fixed set, or a link that is not http(s) or mailto.

import { test } from "node:test";
import assert from "node:assert/strict";
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

// ------------------------------------------------------------------ a minimal DOM

class Node {
  constructor() {
    this.childNodes = [];
    this.parentNode = null;
  }
  appendChild(child) {
    if (child instanceof Fragment) {
      for (const node of [...child.childNodes]) this.appendChild(node);
      child.childNodes = [];
      return child;
    }
    child.parentNode?.removeChild(child);
    child.parentNode = this;
    this.childNodes.push(child);
    return child;
  }
  removeChild(child) {
    this.childNodes = this.childNodes.filter((node) => node !== child);
    child.parentNode = null;
    return child;
  }
  get textContent() {
    return this.childNodes.map((node) => node.textContent).join("");
  }
}
class Text extends Node {
  constructor(text) {
    super();
    this.text = text;
  }
  get textContent() {
    return this.text;
  }
}
class Fragment extends Node {}
class Element extends Node {
  constructor(tag) {
    super();
    this.tagName = tag;
    this.attributes = new Map();
  }
  setAttribute(name, value) {
    this.attributes.set(name, String(value));
  }
  getAttribute(name) {
    return this.attributes.get(name) ?? null;
  }
  addEventListener() {}
}
globalThis.document = {
  createElement: (tag) => new Element(tag),
  createTextNode: (text) => new Text(text),
  createDocumentFragment: () => new Fragment(),
};

const bundle = await build({
  entryPoints: [fileURLToPath(new URL("../src/markdown.ts", import.meta.url))],
  bundle: true,
  format: "esm",
  platform: "neutral",
  write: false,
  logLevel: "silent",
});
const { renderMarkdown, safeHref } = await import(
  `data:text/javascript;base64,${Buffer.from(bundle.outputFiles[0].text).toString("base64")}`
);

function elements(node, out = []) {
  for (const child of node.childNodes) {
    if (child instanceof Element) {
      out.push(child);
      elements(child, out);
    }
  }
  return out;
}

function render(source) {
  const root = new Element("div");
  root.appendChild(renderMarkdown(source));
  return root;
}

const TAGS = new Set(["h3", "h4", "h5", "h6", "p", "br", "pre", "code", "blockquote", "ul", "ol", "li", "hr", "a", "strong", "em"]);
const ATTRIBUTES = new Set(["href", "rel", "target", "start", "data-lang"]);

function assertSafe(source) {
  const root = render(source);
  for (const element of elements(root)) {
    assert.ok(TAGS.has(element.tagName), `<${element.tagName}> from ${JSON.stringify(source)}`);
    for (const [name, value] of element.attributes) {
      assert.ok(ATTRIBUTES.has(name), `${name}= from ${JSON.stringify(source)}`);
      if (name === "href") assert.match(value, /^(https?:\/\/|mailto:)/i, JSON.stringify(source));
    }
  }
  return root;
}

// ------------------------------------------------------------------ tests

test("ordinary Markdown becomes the expected elements", () => {
  const root = render("# Title\n\nSome **bold**, *em*, `code` and [a link](https://example.com).\n\n- one\n- two\n\n3. three\n4. four\n\n> quoted\n\n```rust\nfn main() {}\n```\n\n---");
  assert.deepEqual(
    elements(root).map((element) => element.tagName),
    ["h3", "p", "strong", "em", "code", "a", "ul", "li", "li", "ol", "li", "li", "blockquote", "p", "pre", "code", "hr"],
  );
  const link = elements(root).find((element) => element.tagName === "a");
  assert.equal(link.getAttribute("href"), "https://example.com");
  assert.equal(link.getAttribute("rel"), "noopener noreferrer nofollow");
  assert.equal(elements(root).find((element) => element.tagName === "ol").getAttribute("start"), "3");
  assert.equal(elements(root).find((element) => element.getAttribute("data-lang")).textContent, "fn main() {}");
});

test("text is kept exactly: HTML is characters, not markup", () => {
  const source = '<img src=x onerror="alert(1)"> <script>alert(2)</script> &amp; &lt;';
  const root = assertSafe(source);
  assert.equal(root.textContent, source);
  assert.equal(elements(root).length, 1); // the paragraph
});

test("an unfinished fence (text still streaming) is a code block so far", () => {
  const root = assertSafe("before\n\n```js\nlet a = '<b>';\n");
  const code = elements(root).find((element) => element.tagName === "code");
  assert.equal(code.textContent, "let a = '<b>';");
});

test("only http(s) and mailto links are links", () => {
  for (const href of ["javascript:alert(1)", "JAVASCRIPT:alert(1)", "data:text/html,x", "vbscript:x", "//evil.example", "/relative", " javascript:x"]) {
    const root = assertSafe(`[x](${href})`);
    assert.equal(elements(root).filter((element) => element.tagName === "a").length, 0, href);
  }
  assert.equal(safeHref("mailto:a@example.com"), "mailto:a@example.com");
  assert.equal(safeHref("HTTPS://example.com/x"), "HTTPS://example.com/x");
  assert.equal(safeHref("javascript:alert(1)"), null);
});

test("intraword underscores stay text", () => {
  const root = assertSafe("snake_case_name and foo__bar__baz");
  assert.equal(elements(root).length, 1);
  assert.equal(root.textContent, "snake_case_name and foo__bar__baz");
});

test("random hostile input never yields another element, attribute or link scheme", () => {
  const pieces = [
    "<", ">", "<script>", "</script>", "<img src=x onerror=alert(1)>", '"', "'", "`", "``", "```", "~~~",
    "*", "**", "_", "__", "[", "]", "(", ")", "](", "javascript:", "https://x.example/", "mailto:",
    "#", "# ", "> ", "- ", "1. ", "    ", "\n", "\n\n", "&lt;", "on", "=", "\\", "x", " ",
  ];
  // A seeded generator, so a failure is reproducible.
  let seed = 0x2545f491;
  const next = () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 2 ** 32;
  };
  for (let round = 0; round < 3000; round++) {
    let source = "";
    const length = 1 + Math.floor(next() * 24);
    for (let i = 0; i < length; i++) source += pieces[Math.floor(next() * pieces.length)];
    assertSafe(source);
  }
});
