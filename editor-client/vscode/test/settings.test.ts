import { strict as assert } from "node:assert";
import { test } from "node:test";
import {
  DEFAULT_SETTINGS,
  documentSelector,
  readServerAddress,
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
    model: "default", backend: "cpu", fallbackToCpu: true, endpoint: "http://127.0.0.1:8080", remoteProtocol: "openai",
    remoteModel: "auto", remoteTimeoutMs: 15000, weights: "auto", threads: 0, cacheSlots: 0, maxNewTokens: 64, speculate: 0, debounceMs: 150,
    promptTokens: 1024, contextTokens: 0, mode: "auto", explainMaxNewTokens: 256,
    trigger: "automatic", maxLineSuffix: 8, disabledLanguages: [],
    disabledFiles: [".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.crt", "*.p12", "*.pfx", "*.jks",
      "*.keystore", "*.kdbx", "*.gpg", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.ppk", ".netrc", ".pgpass",
      ".npmrc", ".pypirc", ".git-credentials", "credentials", "credentials.json", "*.tfvars", "*.tfstate"],
    maxTimeMs: 0, prefetch: true, statistics: true, postprocess: true, tokenHealing: true,
  });
});

test("valid values pass through with the protocol's key names", () => {
  const settings = readServerSettings(source({
    model: " /models/wizardcoder.gguf ", backend: "tpu", fallbackToCpu: false, endpoint: "https://gpu.example.com",
    remoteProtocol: "llama.cpp", remoteModel: "qwen", remoteTimeoutMs: 5000, weights: "int4", threads: 2, cacheSlots: 2, maxNewTokens: 32, speculate: 6,
    debounceMs: 0, promptTokens: 2048, contextTokens: 0, mode: "fim",
    explainMaxNewTokens: 512, trigger: "manual", maxLineSuffix: 0, disabledLanguages: ["markdown"],
    disabledFiles: ["*.secret"], maxTimeMs: 800, prefetch: false, statistics: false, postprocess: false, tokenHealing: false,
    serverCommand: ["x"],
  }));
  assert.deepEqual(settings, {
    model: "/models/wizardcoder.gguf", backend: "tpu", fallbackToCpu: false, endpoint: "https://gpu.example.com",
    remoteProtocol: "llama.cpp", remoteModel: "qwen", remoteTimeoutMs: 5000, weights: "int4", threads: 2, cacheSlots: 2, maxNewTokens: 32, speculate: 6,
    debounceMs: 0, promptTokens: 2048, contextTokens: 0, mode: "fim",
    explainMaxNewTokens: 512, trigger: "manual", maxLineSuffix: 0, disabledLanguages: ["markdown"],
    disabledFiles: ["*.secret"], maxTimeMs: 800, prefetch: false, statistics: false, postprocess: false, tokenHealing: false,
  });
  assert.equal("serverCommand" in settings, false, "client-only keys are not sent to the server");
});

test("malformed values fall back to the defaults", () => {
  const settings = readServerSettings(source({
    model: "", backend: "gpu", fallbackToCpu: "yes", endpoint: "", remoteProtocol: "grpc", remoteTimeoutMs: 50,
    maxNewTokens: 0, speculate: 65, debounceMs: -5,
    promptTokens: 12.5, contextTokens: -1, mode: "chat", disabledLanguages: "python", explainMaxNewTokens: "256",
  }));
  assert.deepEqual(settings, DEFAULT_SETTINGS);
  assert.deepEqual(readServerSettings(source({ disabledLanguages: ["python", " ", 3] })).disabledLanguages, []);
  assert.deepEqual(readServerSettings(source({ disabledLanguages: ["python", " "] })).disabledLanguages, ["python"]);
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

test("the document selector covers every file, saved or not (the server decides which get suggestions)", () => {
  assert.deepEqual(documentSelector(), [{ scheme: "file" }, { scheme: "untitled" }]);
});

test("a team server's address is HOST:PORT, else the extension starts its own server", () => {
  assert.deepEqual(readServerAddress(source({ serverAddress: "10.0.0.5:2087" })), { host: "10.0.0.5", port: 2087 });
  assert.deepEqual(readServerAddress(source({ serverAddress: " [::1]:2087 " })), { host: "::1", port: 2087 });
  for (const value of [undefined, "", "10.0.0.5", "host:0", "host:70000", "a b:1", 2087]) {
    assert.equal(readServerAddress(source({ serverAddress: value })), undefined, String(value));
  }
});
