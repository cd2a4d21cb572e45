// The explanation panel's HTML and the reading of progress reports. Pure: no `vscode` import.

/** The text of a work-done progress value: reports carry the whole explanation so far. */
export function progressText(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null) {
    return undefined;
  }
  const { kind, message } = value as { kind?: unknown; message?: unknown };
  return kind === "report" && typeof message === "string" ? message : undefined;
}

/** The markdown of the command's result `{ markdown }`, or undefined. */
export function resultMarkdown(result: unknown): string | undefined {
  if (typeof result !== "object" || result === null) {
    return undefined;
  }
  const { markdown } = result as { markdown?: unknown };
  return typeof markdown === "string" ? markdown : undefined;
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

export type ExplainPhase = "running" | "done" | "cancelled" | "failed";

/**
 * A whole webview document around `bodyHtml` (the markdown already rendered, or escaped text in
 * a <pre>). No scripts: the content security policy allows only the webview's own styles.
 */
export function explanationHtml(bodyHtml: string, phase: ExplainPhase, cspSource: string): string {
  const footer = {
    running: "<p class=\"phase\">Explaining…</p>",
    done: "",
    cancelled: "<p class=\"phase\">Cancelled.</p>",
    failed: "",
  }[phase];
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src ${cspSource} 'unsafe-inline';">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>WizardCoder: Explanation</title>
<style>
body { font-family: var(--vscode-font-family); font-size: var(--vscode-font-size); color: var(--vscode-foreground); line-height: 1.5; }
pre, code { font-family: var(--vscode-editor-font-family); }
pre { background: var(--vscode-textCodeBlock-background); padding: 0.5em; overflow-x: auto; white-space: pre-wrap; }
.phase { opacity: 0.7; font-style: italic; }
</style>
</head>
<body data-phase="${phase}">
<main id="explanation">${bodyHtml}</main>
${footer}
</body>
</html>`;
}
