import { strict as assert } from "node:assert";
import { test } from "node:test";
import { escapeHtml, explanationHtml, progressText, resultMarkdown } from "../src/explainView";

test("reports carry the whole text so far; begin and end carry none", () => {
  assert.equal(progressText({ kind: "report", message: "This function" }), "This function");
  assert.equal(progressText({ kind: "report", percentage: 50 }), undefined);
  assert.equal(progressText({ kind: "begin", title: "Explaining", message: "x" }), undefined);
  assert.equal(progressText({ kind: "end" }), undefined);
  assert.equal(progressText(null), undefined);
});

test("the result is { markdown }", () => {
  assert.equal(resultMarkdown({ markdown: "# Hi" }), "# Hi");
  assert.equal(resultMarkdown({ markdown: 1 }), undefined);
  assert.equal(resultMarkdown(null), undefined);
  assert.equal(resultMarkdown("text"), undefined);
});

test("escapeHtml escapes markup", () => {
  assert.equal(escapeHtml(`<a href="x">'&'</a>`), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
});

test("the panel allows no scripts and marks its phase", () => {
  const html = explanationHtml("<p>ok</p>", "running", "vscode-resource:");
  assert.match(html, /default-src 'none'; style-src vscode-resource: 'unsafe-inline';/);
  assert.doesNotMatch(html, /<script/);
  assert.match(html, /<main id="explanation"><p>ok<\/p><\/main>/);
  assert.match(html, /data-phase="running"/);
  assert.match(html, /Explaining…/);
  assert.doesNotMatch(explanationHtml("", "done", "x"), /Explaining…/);
  assert.match(explanationHtml("", "cancelled", "x"), /Cancelled\./);
});
