import { strict as assert } from "node:assert";
import { test } from "node:test";
import { parseStatus, statusView, stoppedView } from "../src/status";

test("parseStatus accepts the protocol's four states", () => {
  for (const state of ["loading", "idle", "busy", "error"] as const) {
    assert.deepEqual(parseStatus({ state, message: "m" }), { state, message: "m" });
  }
  assert.deepEqual(parseStatus({ state: "idle" }), { state: "idle", message: "" });
});

test("parseStatus rejects other shapes", () => {
  for (const params of [null, undefined, "idle", 3, {}, { state: "ready" }, { state: 1, message: "x" }]) {
    assert.equal(parseStatus(params), undefined);
  }
});

test("each state has its own text, the message goes to the tooltip", () => {
  const texts = new Set<string>();
  for (const state of ["loading", "idle", "busy", "error"] as const) {
    const view = statusView({ state, message: "SmolLM2-135M on cpu" });
    texts.add(view.text);
    assert.match(view.tooltip, new RegExp(`${state}: SmolLM2-135M on cpu$`));
    assert.match(view.text, /WizardCoder$/);
  }
  assert.equal(texts.size, 4);
  assert.equal(statusView({ state: "error", message: "no device" }).background, "statusBarItem.errorBackground");
  assert.equal(statusView({ state: "busy", message: "" }).background, undefined);
  assert.equal(statusView({ state: "idle", message: "" }).tooltip, "WizardCoder: idle");
});

test("idle shows the last suggestion's latency once the server sends one", () => {
  const status = parseStatus({ state: "idle", message: "ready", lastLatencyMs: 182.4 });
  assert.deepEqual(status, { state: "idle", message: "ready", lastLatencyMs: 182 });
  assert.equal(statusView(status).text, "$(sparkle) WizardCoder 182 ms");
  assert.match(statusView(status).tooltip, /last suggestion in 182 ms\)$/);
  assert.equal(parseStatus({ state: "idle", message: "", lastLatencyMs: "fast" })?.lastLatencyMs, undefined);
  assert.equal(statusView({ state: "busy", message: "", lastLatencyMs: 5 }).text, "$(sync~spin) WizardCoder");
});

test("before the first notification and after a stop", () => {
  assert.match(statusView(undefined).tooltip, /starting/);
  const stopped = stoppedView("exit code 1");
  assert.match(stopped.tooltip, /stopped: exit code 1/);
  assert.equal(stopped.background, "statusBarItem.warningBackground");
});
