// A small Markdown renderer that builds DOM nodes: headings, paragraphs, fenced and indented
// code, block quotes, lists, rules, and inline code, bold, italics, links and autolinks. Every
// piece of source text becomes a text node (never innerHTML), so agent output such as
// `<img src=x onerror=...>` renders as the characters it is. Links keep only http(s) and mailto
// targets.

import { h } from "./dom.ts";

type Block =
  | { kind: "heading"; level: number; text: string }
  | { kind: "paragraph"; lines: string[] }
  | { kind: "code"; lang: string; text: string }
  | { kind: "quote"; lines: string[] }
  | { kind: "list"; ordered: boolean; start: number; items: string[] }
  | { kind: "rule" };

const FENCE = /^ {0,3}(```+|~~~+)\s*([\w+-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const ORDERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;

function parseBlocks(source: string): Block[] {
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  const blocks: Block[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (line.trim() === "") {
      i++;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1]!;
      const body: string[] = [];
      i++;
      while (i < lines.length && !lines[i]!.trimStart().startsWith(marker)) {
        body.push(lines[i]!);
        i++;
      }
      if (i >= lines.length && body[body.length - 1] === "") body.pop(); // still streaming
      i++; // the closing fence
      blocks.push({ kind: "code", lang: fence[2] ?? "", text: body.join("\n") });
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      blocks.push({ kind: "heading", level: heading[1]!.length, text: heading[2]! });
      i++;
      continue;
    }
    if (RULE.test(line)) {
      blocks.push({ kind: "rule" });
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted: string[] = [];
      while (i < lines.length && QUOTE.test(lines[i]!)) {
        quoted.push(QUOTE.exec(lines[i]!)![1]!);
        i++;
      }
      blocks.push({ kind: "quote", lines: quoted });
      continue;
    }
    const bullet = BULLET.exec(line);
    const ordered = ORDERED.exec(line);
    if (bullet || ordered) {
      const pattern = bullet ? BULLET : ORDERED;
      const items: string[] = [];
      while (i < lines.length) {
        const match = pattern.exec(lines[i]!);
        if (match) {
          items.push(match[match.length - 1]!);
        } else if (lines[i]!.trim() !== "" && /^\s{2,}/.test(lines[i]!) && items.length > 0) {
          items[items.length - 1] += "\n" + lines[i]!.trim();
        } else {
          break;
        }
        i++;
      }
      blocks.push({
        kind: "list",
        ordered: !bullet,
        start: ordered ? Number(ordered[1]) : 1,
        items,
      });
      continue;
    }
    if (/^( {4}|\t)/.test(line)) {
      const body: string[] = [];
      while (i < lines.length && (/^( {4}|\t)/.test(lines[i]!) || lines[i]!.trim() === "")) {
        body.push(lines[i]!.replace(/^( {4}|\t)/, ""));
        i++;
      }
      while (body.length > 0 && body[body.length - 1]!.trim() === "") body.pop();
      blocks.push({ kind: "code", lang: "", text: body.join("\n") });
      continue;
    }
    const paragraph: string[] = [];
    while (
      i < lines.length &&
      lines[i]!.trim() !== "" &&
      !FENCE.test(lines[i]!) &&
      !HEADING.test(lines[i]!) &&
      !QUOTE.test(lines[i]!) &&
      !(paragraph.length > 0 && (BULLET.test(lines[i]!) || RULE.test(lines[i]!)))
    ) {
      paragraph.push(lines[i]!);
      i++;
    }
    blocks.push({ kind: "paragraph", lines: paragraph });
  }
  return blocks;
}

/** A link target the console will follow: http(s) and mailto only. */
export function safeHref(url: string): string | null {
  const trimmed = url.trim();
  return /^(https?:\/\/|mailto:)/i.test(trimmed) ? trimmed : null;
}

// Inline tokens, leftmost first: code spans, links, autolinks, bold, italics (`_` and `__`
// never open or close inside a word, as in CommonMark).
const INLINE =
  /(`+)([\s\S]*?[^`])\1(?!`)|\[([^\]\n]{1,500})\]\(([^)\s]{1,2000})\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])|\*\*([^*\n][\s\S]*?)\*\*|(?<!\w)__([^_\s][^\n]*?)__(?!\w)|\*([^*\s][^*\n]*?)\*|(?<!\w)_([^_\s][^_\n]*?)_(?!\w)/;

function renderInline(text: string, into: Node, depth = 0): void {
  let rest = text;
  while (rest.length > 0) {
    const match = depth > 8 ? null : INLINE.exec(rest);
    if (!match) {
      into.appendChild(document.createTextNode(rest));
      return;
    }
    if (match.index > 0) into.appendChild(document.createTextNode(rest.slice(0, match.index)));
    const [whole, , code, label, href, bare, bold1, bold2, em1, em2] = match;
    if (code !== undefined) {
      into.appendChild(h("code", {}, code.replace(/^ (.*) $/s, "$1")));
    } else if (label !== undefined && href !== undefined) {
      const target = safeHref(href);
      if (target) {
        const link = h("a", { href: target, rel: "noopener noreferrer nofollow", target: "_blank" });
        renderInline(label, link, depth + 1);
        into.appendChild(link);
      } else {
        into.appendChild(document.createTextNode(whole));
      }
    } else if (bare !== undefined) {
      into.appendChild(h("a", { href: bare, rel: "noopener noreferrer nofollow", target: "_blank" }, bare));
    } else if (bold1 !== undefined || bold2 !== undefined) {
      const strong = h("strong");
      renderInline((bold1 ?? bold2)!, strong, depth + 1);
      into.appendChild(strong);
    } else {
      const em = h("em");
      renderInline((em1 ?? em2)!, em, depth + 1);
      into.appendChild(em);
    }
    rest = rest.slice(match.index + whole.length);
  }
}

function renderLines(lines: string[], into: Node): void {
  lines.forEach((line, index) => {
    if (index > 0) into.appendChild(h("br"));
    renderInline(line.replace(/^\s+/, ""), into);
  });
}

/** Renders `source` as Markdown into a fragment of DOM nodes. */
export function renderMarkdown(source: string): DocumentFragment {
  const fragment = document.createDocumentFragment();
  for (const block of parseBlocks(source)) {
    switch (block.kind) {
      case "heading": {
        const tag = `h${Math.min(6, block.level + 2)}` as "h3";
        const heading = h(tag);
        renderInline(block.text, heading);
        fragment.appendChild(heading);
        break;
      }
      case "paragraph": {
        const p = h("p");
        renderLines(block.lines, p);
        fragment.appendChild(p);
        break;
      }
      case "code":
        fragment.appendChild(
          h("pre", {}, h("code", block.lang ? { "data-lang": block.lang } : {}, block.text)),
        );
        break;
      case "quote": {
        const quote = h("blockquote");
        quote.appendChild(renderMarkdown(block.lines.join("\n")));
        fragment.appendChild(quote);
        break;
      }
      case "list": {
        const list = block.ordered
          ? h("ol", block.start !== 1 ? { start: block.start } : {})
          : h("ul");
        for (const item of block.items) {
          const li = h("li");
          renderLines(item.split("\n"), li);
          list.appendChild(li);
        }
        fragment.appendChild(list);
        break;
      }
      case "rule":
        fragment.appendChild(h("hr"));
        break;
    }
  }
  return fragment;
}
