// The settings the server understands (docs/protocol.md, "Settings"), read from VS Code's
// `wizardcoder.*` configuration. Pure: no `vscode` import, so node's test runner covers it.

export type Backend = "cpu" | "tpu";
export type PromptMode = "auto" | "fim" | "instruct" | "prefix";

/** Sent as initializationOptions and as `settings.wizardcoder` on didChangeConfiguration. */
export interface ServerSettings {
  model: string;
  backend: Backend;
  fallbackToCpu: boolean;
  maxNewTokens: number;
  debounceMs: number;
  promptTokens: number;
  mode: PromptMode;
  languages: string[];
}

export const DEFAULT_SETTINGS: Readonly<ServerSettings> = Object.freeze({
  model: "default",
  backend: "cpu",
  fallbackToCpu: true,
  maxNewTokens: 64,
  debounceMs: 150,
  promptTokens: 1024,
  mode: "auto",
  languages: [],
});

export const DEFAULT_SERVER_COMMAND: readonly string[] = Object.freeze(["wizardcoder-tpu", "serve", "--stdio"]);

/** What the extension needs of a `WorkspaceConfiguration`: `get(key)`. */
export interface ConfigSource {
  get<T>(key: string): T | undefined;
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((item) => typeof item === "string");
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], fallback: T): T {
  return typeof value === "string" && (allowed as readonly string[]).includes(value) ? (value as T) : fallback;
}

function integer(value: unknown, min: number, fallback: number): number {
  return typeof value === "number" && Number.isInteger(value) && value >= min ? value : fallback;
}

/** The protocol's settings from the `wizardcoder` section; wrong types fall back to the defaults. */
export function readServerSettings(config: ConfigSource): ServerSettings {
  const model = config.get<unknown>("model");
  const fallback = config.get<unknown>("fallbackToCpu");
  const languages = config.get<unknown>("languages");
  return {
    model: typeof model === "string" && model.trim() !== "" ? model.trim() : DEFAULT_SETTINGS.model,
    backend: oneOf(config.get<unknown>("backend"), ["cpu", "tpu"] as const, DEFAULT_SETTINGS.backend),
    fallbackToCpu: typeof fallback === "boolean" ? fallback : DEFAULT_SETTINGS.fallbackToCpu,
    maxNewTokens: integer(config.get<unknown>("maxNewTokens"), 1, DEFAULT_SETTINGS.maxNewTokens),
    debounceMs: integer(config.get<unknown>("debounceMs"), 0, DEFAULT_SETTINGS.debounceMs),
    promptTokens: integer(config.get<unknown>("promptTokens"), 16, DEFAULT_SETTINGS.promptTokens),
    mode: oneOf(config.get<unknown>("mode"), ["auto", "fim", "instruct", "prefix"] as const, DEFAULT_SETTINGS.mode),
    languages: isStringArray(languages) ? languages.filter((id) => id.trim() !== "") : [],
  };
}

/** The server's argv: `wizardcoder.serverCommand`, or the default when it is empty or malformed. */
export function readServerCommand(config: ConfigSource): { command: string; args: string[] } {
  const argv = config.get<unknown>("serverCommand");
  const [command, ...args] = isStringArray(argv) && argv.length > 0 && argv[0]!.trim() !== "" ? argv : DEFAULT_SERVER_COMMAND;
  return { command: command!, args };
}

/** A document selector entry, structurally what vscode-languageclient accepts. */
export interface DocumentFilter {
  scheme: string;
  language?: string;
}

/** Documents the client syncs: the listed languages, or every file when the list is empty. */
export function documentSelector(languages: readonly string[]): DocumentFilter[] {
  const schemes = ["file", "untitled"];
  if (languages.length === 0) {
    return schemes.map((scheme) => ({ scheme }));
  }
  return languages.flatMap((language) => schemes.map((scheme) => ({ scheme, language })));
}

/** Keys whose change needs a restart of the client (the rest go over didChangeConfiguration). */
export const RESTART_KEYS: readonly string[] = ["serverCommand", "languages"];
