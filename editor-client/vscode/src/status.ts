// The server's `wizardcoder/status` notification turned into what the status bar item shows.
// Pure: no `vscode` import.

export type ServerState = "loading" | "idle" | "busy" | "error";

export interface StatusParams {
  state: ServerState;
  message: string;
  /** The last suggestion's latency (request to answer, in the server), once there is one. */
  lastLatencyMs?: number;
}

export interface StatusView {
  /** Status bar text, with a codicon. */
  text: string;
  tooltip: string;
  /** A theme colour id for the background, or undefined for the default. */
  background: "statusBarItem.errorBackground" | "statusBarItem.warningBackground" | undefined;
}

const STATES: readonly ServerState[] = ["loading", "idle", "busy", "error"];

/** The notification's params, or undefined when they do not have the protocol's shape. */
export function parseStatus(params: unknown): StatusParams | undefined {
  if (typeof params !== "object" || params === null) {
    return undefined;
  }
  const { state, message, lastLatencyMs } = params as { state?: unknown; message?: unknown; lastLatencyMs?: unknown };
  if (typeof state !== "string" || !(STATES as readonly string[]).includes(state)) {
    return undefined;
  }
  const parsed: StatusParams = { state: state as ServerState, message: typeof message === "string" ? message : "" };
  if (typeof lastLatencyMs === "number" && Number.isFinite(lastLatencyMs) && lastLatencyMs >= 0) {
    parsed.lastLatencyMs = Math.round(lastLatencyMs);
  }
  return parsed;
}

export function statusView(status: StatusParams | undefined): StatusView {
  const detail = status?.message ? `: ${status.message}` : "";
  switch (status?.state) {
    case undefined:
      return { text: "$(loading~spin) WizardCoder", tooltip: "WizardCoder: starting the server", background: undefined };
    case "loading":
      return { text: "$(loading~spin) WizardCoder", tooltip: `WizardCoder: loading${detail}`, background: undefined };
    case "idle": {
      const latency = status.lastLatencyMs !== undefined ? ` ${status.lastLatencyMs} ms` : "";
      const last = latency ? ` (last suggestion in${latency})` : "";
      return { text: `$(sparkle) WizardCoder${latency}`, tooltip: `WizardCoder: idle${detail}${last}`, background: undefined };
    }
    case "busy":
      return { text: "$(sync~spin) WizardCoder", tooltip: `WizardCoder: busy${detail}`, background: undefined };
    case "error":
      return { text: "$(error) WizardCoder", tooltip: `WizardCoder: error${detail}`, background: "statusBarItem.errorBackground" };
  }
}

/** Shown when the server process stops for good. */
export function stoppedView(reason: string): StatusView {
  return { text: "$(circle-slash) WizardCoder", tooltip: `WizardCoder: server stopped: ${reason}`, background: "statusBarItem.warningBackground" };
}
