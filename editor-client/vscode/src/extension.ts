// WizardCoder TPU for VS Code: a thin adapter over the wizardcoder-tpu language server.
// Inline completion is vscode-languageclient's own feature (registered by default since 10.x);
// this file reads settings, shows `wizardcoder/status` in the status bar, and runs
// "Explain Selection" with its streamed markdown. All behaviour lives in the server.
import * as net from "node:net";
import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  State,
  WorkDoneProgress,
  type LanguageClientOptions,
  type ServerOptions,
  type StreamInfo,
} from "vscode-languageclient/node";
import { escapeHtml, explanationHtml, progressText, resultMarkdown, type ExplainPhase } from "./explainView";
import { documentSelector, readServerAddress, readServerCommand, readServerSettings, RESTART_KEYS } from "./settings";
import { parseStatus, statusView, stoppedView, type StatusView } from "./status";

const SECTION = "wizardcoder";
const SERVER_EXPLAIN = "wizardcoder.explainSelection";
const SERVER_ACCEPTED = "wizardcoder.accepted";

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;

function showStatus(view: StatusView): void {
  statusItem.text = view.text;
  statusItem.tooltip = view.tooltip;
  statusItem.backgroundColor = view.background ? new vscode.ThemeColor(view.background) : undefined;
  statusItem.show();
}

/** A connection to a running team server (`wizardcoder.serverAddress`). */
function connectTo(host: string, port: number): Promise<StreamInfo> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    socket.once("connect", () => resolve({ reader: socket, writer: socket }));
    socket.once("error", reject);
  });
}

function createClient(): LanguageClient {
  const config = vscode.workspace.getConfiguration(SECTION);
  const settings = readServerSettings(config);
  const { command, args } = readServerCommand(config);
  const address = readServerAddress(config);
  const serverOptions: ServerOptions = address ? () => connectTo(address.host, address.port) : { command, args };
  const token = process.env.WIZARDCODER_TOKEN;
  const clientOptions: LanguageClientOptions = {
    documentSelector: documentSelector(),
    initializationOptions: address && token ? { ...settings, token } : settings,
    outputChannel: output,
    middleware: {
      // The statistics (docs/protocol.md): a suggestion VS Code got to show is reported once by its id.
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        const result = await next(document, position, context, token);
        const items = Array.isArray(result) ? result : result?.items ?? [];
        const id = suggestionId(items[0]?.command);
        if (id !== undefined && id !== lastShown && created.isRunning()) {
          lastShown = id;
          void created.sendNotification("wizardcoder/shown", { id });
        }
        return result;
      },
    },
  };
  let lastShown: string | undefined;
  const created = new LanguageClient("wizardcoder-tpu", "WizardCoder TPU", serverOptions, clientOptions);
  created.onNotification("wizardcoder/status", (params: unknown) => {
    const status = parseStatus(params);
    if (status) {
      showStatus(statusView(status));
    }
  });
  created.onDidChangeState((event) => {
    if (event.newState === State.Stopped) {
      showStatus(stoppedView("see the WizardCoder TPU output"));
    }
  });
  return created;
}

async function startClient(): Promise<void> {
  showStatus(statusView(undefined));
  client = createClient();
  try {
    await client.start();
  } catch (error) {
    showStatus(stoppedView(String(error)));
    output.error(`cannot start the server: ${String(error)}`);
    void vscode.window.showErrorMessage(`WizardCoder: cannot start the language server (${String(error)}). ` +
      "Install wizardcoder-tpu or set wizardcoder.serverCommand.");
  }
}

async function restartClient(): Promise<void> {
  const old = client;
  client = undefined;
  if (old) {
    try {
      await old.dispose();
    } catch (error) {
      output.warn(`stopping the server: ${String(error)}`);
    }
  }
  await startClient();
}

async function onConfigurationChanged(event: vscode.ConfigurationChangeEvent): Promise<void> {
  if (!event.affectsConfiguration(SECTION)) {
    return;
  }
  if (RESTART_KEYS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
    await restartClient();
    return;
  }
  if (client?.isRunning()) {
    const settings = readServerSettings(vscode.workspace.getConfiguration(SECTION));
    await client.sendNotification("workspace/didChangeConfiguration", { settings: { [SECTION]: settings } });
  }
}

/** The suggestion id that the server put in an inline item's command, or undefined. */
function suggestionId(command: vscode.Command | undefined): string | undefined {
  const argument: unknown = command?.command === SERVER_ACCEPTED ? command.arguments?.[0] : undefined;
  const id = typeof argument === "object" && argument !== null ? (argument as { id?: unknown }).id : undefined;
  return typeof id === "string" ? id : undefined;
}

/** Ask for a suggestion now: VS Code's own trigger, an Invoked request (runs with trigger "manual"). */
async function suggest(): Promise<void> {
  await vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
}

/** Suggestions as you type, or only when asked: flips `wizardcoder.trigger` where it is set (the
 * workspace's settings when they set it, else the user's); the server hears of it as of any change. */
async function toggleAutomatic(): Promise<void> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const next = config.get<string>("trigger") === "manual" ? "automatic" : "manual";
  const target = config.inspect<string>("trigger")?.workspaceValue !== undefined
    ? vscode.ConfigurationTarget.Workspace
    : vscode.ConfigurationTarget.Global;
  await config.update("trigger", next, target);
  void vscode.window.showInformationMessage(next === "manual"
    ? "WizardCoder: suggestions only when asked (WizardCoder: Suggest Completion, Alt+\\)."
    : "WizardCoder: suggestions as you type.");
}

/** The markdown rendered by VS Code's built-in markdown extension, or escaped text. */
async function renderMarkdown(markdown: string): Promise<string> {
  try {
    const html = await vscode.commands.executeCommand<string>("markdown.api.render", markdown);
    if (typeof html === "string") {
      return html;
    }
  } catch {
    // the built-in markdown extension is disabled: show the text as it is
  }
  return `<pre>${escapeHtml(markdown)}</pre>`;
}

async function explainSelection(): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  const running = client;
  if (!editor || !running?.isRunning()) {
    void vscode.window.showWarningMessage("WizardCoder: open a file the server is attached to first.");
    return;
  }
  const selection = editor.selection.isEmpty ? editor.document.lineAt(editor.selection.active.line).range : editor.selection;
  const panel = vscode.window.createWebviewPanel("wizardcoder.explanation", "WizardCoder: Explanation",
    { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true }, { enableScripts: false });
  let latest = "";
  let rendering = Promise.resolve();
  const show = (markdown: string, phase: ExplainPhase): Promise<void> => {
    latest = markdown;
    // Render in order, and skip a stale report when a newer one arrived meanwhile.
    rendering = rendering.then(async () => {
      if (markdown !== latest && phase === "running") {
        return;
      }
      panel.webview.html = explanationHtml(await renderMarkdown(markdown), phase, panel.webview.cspSource);
    });
    return rendering;
  };
  void show("", "running");

  const cancel = new vscode.CancellationTokenSource();
  const closed = panel.onDidDispose(() => cancel.cancel());
  const token = `wizardcoder-explain-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const progress = running.onProgress(WorkDoneProgress.type, token, (value) => {
    const text = progressText(value);
    if (text !== undefined) {
      void show(text, "running");
    }
  });
  try {
    const result: unknown = await running.sendRequest(ExecuteCommandRequest.type, {
      command: SERVER_EXPLAIN,
      arguments: [editor.document.uri.toString(), running.code2ProtocolConverter.asRange(selection)],
      workDoneToken: token,
    }, cancel.token);
    await show(resultMarkdown(result) ?? latest, "done");
  } catch (error) {
    if (cancel.token.isCancellationRequested) {
      return;
    }
    await show(`${latest}\n\n**WizardCoder:** ${error instanceof Error ? error.message : String(error)}`, "failed");
  } finally {
    progress.dispose();
    closed.dispose();
    cancel.dispose();
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("WizardCoder TPU", { log: true });
  statusItem = vscode.window.createStatusBarItem("wizardcoder-tpu.status", vscode.StatusBarAlignment.Right, 100);
  statusItem.name = "WizardCoder";
  statusItem.command = "wizardcoder-tpu.showOutput";
  context.subscriptions.push(
    output,
    statusItem,
    vscode.commands.registerCommand("wizardcoder-tpu.explainSelection", explainSelection),
    vscode.commands.registerCommand("wizardcoder-tpu.restartServer", restartClient),
    vscode.commands.registerCommand("wizardcoder-tpu.suggest", suggest),
    vscode.commands.registerCommand("wizardcoder-tpu.toggleAutomatic", toggleAutomatic),
    vscode.commands.registerCommand("wizardcoder-tpu.showOutput", () => output.show(true)),
    vscode.workspace.onDidChangeConfiguration(onConfigurationChanged),
  );
  await startClient();
}

export async function deactivate(): Promise<void> {
  const old = client;
  client = undefined;
  await old?.dispose();
}
