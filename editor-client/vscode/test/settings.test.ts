import { strict as assert } from "node:assert";
import { test } from "node:test";
import {
  DEFAULT_SETTINGS,
  documentSelector,
  readServerCommand,
  readServerSettings,
  type ConfigSource,
} from "../src/settings";

function source(values: Record<string, unknown>): ConfigSource {
  return { get: <T>(key: string) => values[key] as T | undefined };
}

test("an empty configuration gives the protocol's defaults", () => {
  assert.deepEqual(readServerSettings(source({})), DEFAULT_SETTINGS);
  assert.deepEqual(DEFAULT_SETTINGS, {
    model: "default", backend: "cpu", fallbackToCpu: true, weights: "auto", threads: 0, maxNewTokens: 64, speculate: 8,
    debounceMs: 150, promptTokens: 1024, contextTokens: 512, mode: "auto", languages: [], explainMaxNewTokens: 256,
    postprocess: true,
  });
});

test("valid values pass through with the protocol's key names", () => {
  const settings = readServerSettings(source({
    model: " /models/wizardcoder.gguf ", backend: "tpu", fallbackToCpu: false, weights: "int4", threads: 2, maxNewTokens: 32,
    speculate: 0, debounceMs: 0, promptTokens: 2048, contextTokens: 0, mode: "fim", languages: ["python", "rust"],
    explainMaxNewTokens: 512, postprocess: false, serverCommand: ["x"],
  }));
  assert.deepEqual(settings, {
    model: "/models/wizardcoder.gguf", backend: "tpu", fallbackToCpu: false, weights: "int4", threads: 2, maxNewTokens: 32,
    speculate: 0, debounceMs: 0, promptTokens: 2048, contextTokens: 0, mode: "fim", languages: ["python", "rust"],
    explainMaxNewTokens: 512, postprocess: false,
  });
  assert.equal("serverCommand" in settings, false, "client-only keys are not sent to the server");
});

test("malformed values fall back to the defaults", () => {
  const settings = readServerSettings(source({
    model: "", backend: "gpu", fallbackToCpu: "yes", maxNewTokens: 0, speculate: 65, debounceMs: -5,
    promptTokens: 12.5, contextTokens: -1, mode: "chat", languages: "python", explainMaxNewTokens: "256",
  }));
  assert.deepEqual(settings, DEFAULT_SETTINGS);
  assert.deepEqual(readServerSettings(source({ languages: ["python", " ", 3] })).languages, []);
  assert.deepEqual(readServerSettings(source({ languages: ["python", " "] })).languages, ["python"]);
});

test("values outside the server's range fall back to the defaults, the bounds themselves pass", () => {
  assert.deepEqual(readServerSettings(source({ promptTokens: 16, maxNewTokens: 4097, debounceMs: 10_001 })), DEFAULT_SETTINGS);
  const bounds = readServerSettings(source({ promptTokens: 64, maxNewTokens: 4096, debounceMs: 10_000 }));
  assert.deepEqual([bounds.promptTokens, bounds.maxNewTokens, bounds.debounceMs], [64, 4096, 10_000]);
});

test("the server command splits into program and arguments", () => {
  assert.deepEqual(readServerCommand(source({})), { command: "wizardcoder-tpu", args: ["serve", "--stdio"] });
  assert.deepEqual(readServerCommand(source({ serverCommand: ["/venv/bin/wizardcoder-tpu", "serve", "--backend", "tpu"] })),
    { command: "/venv/bin/wizardcoder-tpu", args: ["serve", "--backend", "tpu"] });
  assert.deepEqual(readServerCommand(source({ serverCommand: [] })), { command: "wizardcoder-tpu", args: ["serve", "--stdio"] });
  assert.deepEqual(readServerCommand(source({ serverCommand: "wizardcoder-tpu serve" })),
    { command: "wizardcoder-tpu", args: ["serve", "--stdio"] });
});

test("the document selector covers every file, or only the listed languages", () => {
  assert.deepEqual(documentSelector([]), [{ scheme: "file" }, { scheme: "untitled" }]);
  assert.deepEqual(documentSelector(["python"]), [
    { scheme: "file", language: "python" },
    { scheme: "untitled", language: "python" },
  ]);
});
