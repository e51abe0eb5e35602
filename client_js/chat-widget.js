// @ts-check
// The default chat interface, drawn from a ChatClient's transcript. ES module, no dependencies.
//
//   import { mountChat } from "./chat-widget.js";
//   const { client, destroy } = mountChat(document.getElementById("chat"), { url, token, ticket });
//
// The widget only draws: the client merges frames by seq and offset, reconnects, queues
// and resends. Every text goes through textContent, never innerHTML. Contract:
// client_js/API.md; guide: docs/client.md. Style: chat-widget.css (classes prefixed lc-).
//
// In parts: mountChat (the entry point) makes a ChatWidget, which builds its DOM once
// (buildView), draws the messages with a MessageList, the status line from statusLine, the
// composer itself, and waits with a QueueNotice before it says a reply is queued. A bot's pace
// (the chat frame's) is a Pacer's: replies received live appear word by word at that pace.

import { ChatClient } from "./chat-client.js";
import { Pacer } from "./pacer.js";

/**
 * @typedef {import("./chat-client.js").Entry} Entry
 * @typedef {import("./chat-client.js").Options} ClientOptions
 * @typedef {(count: number, max: ?number) => string} CountLabel
 * @typedef {{[name in keyof typeof DEFAULT_LABELS]: name extends "counter" | "tooLong" ? CountLabel
 *   : name extends "errors" ? Readonly<Record<string, string>> : string}} Labels DEFAULT_LABELS's names, any texts
 * @typedef {Partial<Omit<Labels, "errors">> & {errors?: Record<string, string>, queued?: string}} GivenLabels
 * @typedef {object} WidgetOptions
 * @property {GivenLabels} [labels] partial overrides of DEFAULT_LABELS
 * @property {ChatClient} [client] an existing ChatClient: then the widget neither starts nor closes it
 * @property {boolean} [autofocus] focus the textarea once the chat is ready
 * @property {number} [waitingAfterMs] how long a reply is queued before "Waiting for the assistant…"
 * @typedef {WidgetOptions & Partial<ClientOptions>} MountOptions
 * @typedef {{code: string, message?: string}} Notice an error to show on the status line
 * @typedef {{code: string, retryable?: boolean}} Failure why a message failed, by its client_msg_id
 * @typedef {"send" | "queue" | ""} Awaited
 */

/**
 * Every text the widget shows; override any of them with `labels` (e.g. another language).
 * `waitingForConnection` was called `queued` before replies could queue on the server: a
 * `labels.queued` is still taken as `waitingForConnection`.
 */
export const DEFAULT_LABELS = Object.freeze({
  chat: "Chat",
  log: "Conversation",
  you: "You",
  assistant: "Assistant",
  input: "Your message",
  placeholder: "Write a message…",
  hint: "Enter to send, Shift+Enter for a new line",
  send: "Send",
  retry: "Retry",
  typing: "The assistant is writing…",
  waitingForAssistant: "Waiting for the assistant…",
  waitingForConnection: "Waiting for the connection…",
  notSent: "Not sent.",
  replyFailed: "The reply could not be completed.",
  counter: /** @type {CountLabel} */ ((count, max) => (max ? `${count} / ${max}` : `${count}`)),
  tooLong: /** @type {CountLabel} */ ((count, max) => `${count} / ${max}: ${count - Number(max)} too many`),
  connecting: "Connecting…",
  reconnecting: "Connection lost. Reconnecting…",
  offline: "You are offline. Your messages will be sent when the connection is back.",
  reconnected: "Connected again.",
  closed: "The chat is closed.",
  error: "Something went wrong. Please try again.",
  errors: Object.freeze(/** @type {Record<string, string>} */ ({
    invalid_ticket: "This chat link is not valid. Please reload the page.",
    ticket_expired: "This chat link has expired. Please reload the page.",
    ticket_mismatch: "This chat link belongs to someone else. Please reload the page.",
    chat_not_found: "This chat could not be found. Please reload the page.",
    empty_message: "Please write a message first.",
    message_too_long: "Your message is too long.",
    message_limit: "You have sent the maximum number of messages in this chat.",
    chat_limit: "You have opened the maximum number of chats.",
    chat_token_limit: "This chat has reached its maximum length.",
    budget_exhausted: "The chat is not available any more.",
    paused: "The chat is paused for the moment. Please try again shortly.",
    llm_error: "The assistant could not answer.",
    llm_paused: "The assistant is pausing after repeated failures. Please try again in a moment.",
    cannot_connect: "The chat cannot connect. If this goes on, please reload the page.",
  })),
});

// Codes that end the chat for this page: nothing the participant does here can help.
// (not_connected is not one: the client reconnects by itself.)
const FATAL = new Set(["invalid_ticket", "ticket_expired", "ticket_mismatch", "chat_not_found"]);
const WIDGET_OPTIONS = new Set(["labels", "client", "autofocus", "waitingAfterMs"]);
const RECONNECTED_MS = 3000;
/**
 * The service says `queued` after every message, also when a reply slot is free and the first
 * words follow within a second: the typing dots show until then, and "Waiting for the
 * assistant…" only for a reply still queued after this long (`waitingAfterMs` overrides it).
 */
const WAITING_AFTER_MS = 1000;
const NEAR_BOTTOM_PX = 48;

let instances = 0;

/**
 * Mount the chat in `container`.
 * options: url, token, ticket (required unless `client` is given), labels (partial overrides
 * of DEFAULT_LABELS; `labels.errors` merges per code), autofocus (focus the textarea once the
 * chat is ready), client (an existing ChatClient; then the widget neither starts nor closes
 * it), waitingAfterMs (how long a reply is queued before "Waiting for the assistant…" replaces
 * the typing dots; default 1000), and any other ChatClient option (heartbeatMs, backoffMaxMs, ...), passed through.
 * Returns {client, destroy, ready}: `ready` is the promise of client.start() (resolves to
 * the client, or to null after a failure shown on the status line).
 * @param {HTMLElement} container @param {MountOptions} [options]
 * @returns {{client: ChatClient, destroy: () => void, ready: Promise<?ChatClient>}}
 */
export function mountChat(container, options = {}) {
  if (!container || typeof container.appendChild !== "function") {
    throw new TypeError("mountChat: the first argument must be a DOM element");
  }
  const widget = new ChatWidget(container, options);
  return { client: widget.client, destroy: () => widget.destroy(), ready: widget.ready };
}

/**
 * DEFAULT_LABELS with the page's overrides: `labels.errors` merges per code, and the former
 * name `queued` sets `waitingForConnection` (unless that is given too).
 * @param {GivenLabels} given @returns {Labels}
 */
function mergeLabels(given) {
  return {
    ...DEFAULT_LABELS,
    ...(given.queued !== undefined && { waitingForConnection: given.queued }),
    ...given,
    errors: { ...DEFAULT_LABELS.errors, ...(given.errors || {}) },
  };
}

/** @param {MountOptions} options @returns {Partial<ClientOptions>} the options that are not the widget's own */
function clientOptions(options) {
  return Object.fromEntries(Object.entries(options).filter(([name]) => !WIDGET_OPTIONS.has(name)));
}

/**
 * The widget: one per mountChat. It keeps what the page shows besides the transcript (which is
 * the client's), redraws everything on every change (render), and undoes all it did on destroy().
 */
class ChatWidget {
  /** @param {HTMLElement} container @param {MountOptions} options */
  constructor(container, options) {
    this.labels = mergeLabels(options.labels || {});
    this.ownClient = !options.client;
    /** @type {ChatClient} */
    this.client = options.client || new ChatClient(clientOptions(options));
    this.autofocus = Boolean(options.autofocus);
    this.view = buildView(this.labels, `lc-${++instances}`);
    container.appendChild(this.view.root);
    this.messages = new MessageList(this.view, this.labels, (id) => this.retry(id));
    this.queueNotice = new QueueNotice(options.waitingAfterMs ?? WAITING_AFTER_MS, () => this.render());
    /** @type {?Pacer} the bot's pace, from the first `chat` frame; null: replies show as they stream */
    this.pacer = null;
    /** replies up to this seq were in the history when the chat opened: shown at once */
    this.pacedAfterSeq = 0;
    /** @type {?ReturnType<typeof setTimeout>} the next word's redraw */
    this.paceTimer = null;

    this.chatReady = false; // a `chat` frame has arrived
    /** @type {?Notice} the chat cannot go on in this page */
    this.fatal = null;
    /** @type {?Notice} the last error not tied to a shown message */
    this.notice = null;
    /** @type {Map<string, Failure>} client_msg_id -> why it failed */
    this.failures = new Map();
    this.reconnectedUntil = 0; // "Connected again." until then
    /** @type {?ReturnType<typeof setTimeout>} */
    this.reconnectedTimer = null;
    /** @type {string} the state of the last `state` event */
    this.lastState = this.client.state;
    this.wasReconnecting = false;
    this.destroyed = false;
    this.scrollPending = false; // the participant sent: scroll to the bottom at the next render
    /** @type {Array<() => void>} removes a listener each */
    this.cleanups = [];

    this.listenToComposer();
    this.listenToClient();
    if (typeof window !== "undefined") {
      this.listen(window, "online", () => this.render());
      this.listen(window, "offline", () => this.render());
    }
    this.render();
    /** @type {Promise<?ChatClient>} */
    this.ready = this.start();
    if (!this.ownClient && this.client.chatId) {
      this.chatReady = true;
      this.choosePace();
    }
    this.render();
  }

  /** @param {EventTarget} target @param {string} type @param {(event: any) => void} fn */
  listen(target, type, fn) {
    target.addEventListener(type, fn);
    this.cleanups.push(() => target.removeEventListener(type, fn));
  }

  listenToComposer() {
    const { form, input } = this.view;
    this.listen(form, "submit", (/** @type {SubmitEvent} */ event) => {
      event.preventDefault();
      this.submit();
    });
    this.listen(input, "keydown", (/** @type {KeyboardEvent} */ event) => {
      if (event.key !== "Enter" || event.shiftKey || event.altKey || event.isComposing || event.keyCode === 229) return;
      event.preventDefault(); // Enter sends (also with Ctrl/Cmd); Shift+Enter keeps the newline
      this.submit();
    });
    this.listen(input, "input", () => {
      if (this.notice && this.notice.code === "message_too_long") this.notice = null;
      this.drawComposer();
      this.drawStatus();
    });
  }

  listenToClient() {
    const render = () => this.render();
    this.listen(this.client, "transcript", render);
    this.listen(this.client, "chat", () => this.onChat());
    this.listen(this.client, "state", (/** @type {CustomEvent} */ event) => this.onState(event.detail));
    this.listen(this.client, "ack", (/** @type {CustomEvent} */ event) => {
      const detail = event.detail || {};
      if (detail.client_msg_id) this.failures.delete(detail.client_msg_id);
      this.render();
    });
    this.listen(this.client, "message", render);
    this.listen(this.client, "error", (/** @type {CustomEvent} */ event) => this.onError(event.detail || {}));
  }

  /**
   * client.start() for a client of the widget's own (else the given client at once).
   * @returns {Promise<?ChatClient>} the client once the chat is open, or null after a failure shown on the status line
   */
  start() {
    if (!this.ownClient) return Promise.resolve(this.client);
    return Promise.resolve()
      .then(() => this.client.start())
      .then(
        () => {
          this.chatReady = true;
          this.render();
          return this.client;
        },
        (err) => {
          if (this.destroyed) return null;
          const code = (err && (err.code || (err.detail && err.detail.code))) || "internal";
          this.fatal = { code, message: err && err.message };
          this.render();
          return null;
        },
      );
  }

  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    clearTimeout(this.reconnectedTimer ?? undefined);
    clearTimeout(this.paceTimer ?? undefined);
    this.queueNotice.cancel();
    for (const undo of this.cleanups.splice(0)) undo();
    if (this.ownClient) this.client.close();
    this.view.root.remove();
    this.messages.clear();
  }

  // ---- the client's events --------------------------------------------------------------
  onChat() {
    this.chatReady = true;
    this.choosePace();
    this.render();
    if (this.autofocus && document.activeElement !== this.view.input) this.view.input.focus();
  }

  /** Once, when the chat opens: the bot's pace, for the replies that come after the history. */
  choosePace() {
    const pace = this.client.pace;
    if (this.pacer || !pace) return;
    this.pacer = new Pacer(pace);
    const transcript = Array.isArray(this.client.transcript) ? this.client.transcript : [];
    this.pacedAfterSeq = Math.max(0, ...transcript.map((entry) => entry.seq ?? 0));
  }

  /**
   * What to show of `entry`, whose node is `key`: a reply received live at the bot's pace.
   * @param {Entry} entry @param {string} key @returns {string}
   */
  shownText(entry, key) {
    const text = entry.text || "";
    const live = entry.role === "assistant" && entry.seq !== null && entry.seq > this.pacedAfterSeq;
    return this.pacer && live && entry.status !== "failed" ? this.pacer.visible(key, text) : text;
  }

  /** @param {{state?: string} | undefined} detail */
  onState(detail) {
    const state = (detail && detail.state) || this.client.state;
    if (state === "open" && this.notice && this.notice.code === "cannot_connect") this.notice = null; // it could, after all
    if (state === "reconnecting" || (state === "connecting" && this.chatReady)) this.wasReconnecting = true;
    if (state === "open" && this.wasReconnecting && this.lastState !== "open") {
      this.wasReconnecting = false;
      this.reconnectedUntil = Date.now() + RECONNECTED_MS;
      clearTimeout(this.reconnectedTimer ?? undefined);
      this.reconnectedTimer = setTimeout(() => this.render(), RECONNECTED_MS + 50);
    }
    this.lastState = state;
    this.render();
  }

  /** @param {Partial<import("./chat-client.js").ErrorDetail>} detail */
  onError(detail) {
    const code = detail.code ?? "";
    if (detail.code === "not_connected" || detail.code === "throttled") {
      // the client reconnects or resends by itself: nothing to tell
    } else if (FATAL.has(code)) {
      this.fatal = { code, message: detail.message };
    } else if (detail.client_msg_id) {
      this.failures.set(detail.client_msg_id, { code, retryable: detail.retryable });
      // A refusal the participant must know about even if the message scrolled away.
      if (!detail.retryable) this.notice = { code, message: detail.message };
    } else if (detail.seq === undefined || detail.seq === null) {
      this.notice = { code, message: detail.message };
    }
    this.render();
  }

  // ---- what the participant does ----------------------------------------------------------
  submit() {
    const { count, over, canSend } = this.drawComposer();
    if (!canSend) {
      if (over) {
        this.notice = { code: "message_too_long" };
        this.drawStatus();
      }
      return;
    }
    if (count === 0) return;
    const value = this.view.input.value.trim();
    this.notice = null;
    try {
      this.messages.sent(this.client.send(value), value);
    } catch (err) {
      this.notice = { code: "internal", message: /** @type {any} */ (err)?.message || this.labels.error };
      this.render();
      return;
    }
    this.view.input.value = "";
    this.scrollPending = true;
    this.render();
  }

  /** The Retry button of a failed message or reply. @param {string} id its client_msg_id */
  retry(id) {
    this.failures.delete(id);
    this.notice = null;
    this.view.input.focus(); // the button goes away with the failure: keep keyboard users in place
    this.client.retry(id);
    this.render();
  }

  // ---- drawing ---------------------------------------------------------------------------
  render() {
    if (this.destroyed) return;
    const { log, waiting, typing } = this.view;
    const client = this.client;
    const transcript = Array.isArray(client.transcript) ? client.transcript : [];
    const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight <= NEAR_BOTTOM_PX;
    this.messages.draw(transcript, {
      busy: Boolean(client.busy), open: client.state === "open", failures: this.failures,
      show: (entry, key) => this.shownText(entry, key),
    });
    this.schedulePace();
    const live = client.state === "open" && this.chatReady;
    const what = this.queueNotice.decide(transcript, awaited(transcript));
    waiting.hidden = !(live && what === "queue");
    typing.hidden = !(live && what === "send");
    this.drawStatus();
    this.drawComposer();
    if (nearBottom || this.scrollPending) {
      log.scrollTop = log.scrollHeight;
      this.scrollPending = false;
    }
  }

  /** Redraw when the next word of a paced reply is due. */
  schedulePace() {
    clearTimeout(this.paceTimer ?? undefined);
    const due = this.pacer && this.pacer.nextInMs();
    if (due !== null && due !== undefined) this.paceTimer = setTimeout(() => this.render(), due + 5);
  }

  drawStatus() {
    const { kind, message } = statusLine(this.labels, {
      state: this.client.state, chatReady: this.chatReady, fatal: this.fatal, notice: this.notice,
      reconnected: Date.now() < this.reconnectedUntil,
      offline: typeof navigator !== "undefined" && navigator.onLine === false,
    });
    const { status } = this.view;
    if (status.dataset.state !== kind) status.dataset.state = kind;
    setText(status, message);
  }

  /** The counter, the lock and the Send button. @returns {{count: number, over: boolean, canSend: boolean}} */
  drawComposer() {
    const { counter, input, form, sendButton } = this.view;
    const client = this.client;
    const max = client.limits && client.limits.max_chars;
    const count = charCount(input.value.trim());
    const over = Boolean(max) && count > Number(max);
    const near = Boolean(max) && !over && count >= Math.floor(Number(max) * 0.9);
    setText(counter, over ? text(this.labels, "tooLong", count, max) : text(this.labels, "counter", count, max));
    counter.classList.toggle("lc-counter--warn", near);
    counter.classList.toggle("lc-counter--over", over);
    toggle(input, "aria-invalid", over, "true");

    // a reply still appearing at its pace holds the composer as a reply being written does
    const pacing = Boolean(this.pacer && this.pacer.pending());
    const locked = Boolean(client.busy) || pacing || Boolean(this.fatal) || client.state === "closed";
    input.readOnly = locked;
    toggle(input, "aria-readonly", locked, "true");
    form.classList.toggle("lc-composer--locked", locked);
    const canSend = this.chatReady && !locked && count > 0 && !over;
    toggle(sendButton, "aria-disabled", !canSend, "true");
    return { count, over, canSend };
  }
}

/**
 * The DOM the widget builds once: the log (with, at its end, the waiting notice and the typing
 * dots), the status line, and the composer (text box, counter, hint, Send).
 * @param {Labels} labels @param {string} id prefix of the element ids, unique per widget
 */
function buildView(labels, id) {
  const root = el("section", "lc-chat", { "aria-label": labels.chat });
  const log = el("div", "lc-log", {
    role: "log", "aria-live": "polite", "aria-relevant": "additions text", "aria-label": labels.log, tabindex: "0",
  });
  const typing = el("div", "lc-typing"); // inside the log: announced when it appears
  typing.hidden = true;
  const dots = el("span", "lc-typing-dots", { "aria-hidden": "true" });
  dots.append(el("span", "lc-dot"), el("span", "lc-dot"), el("span", "lc-dot"));
  const typingText = el("span", "lc-sr");
  typingText.textContent = labels.typing;
  typing.append(dots, typingText);
  // The reply waits in the service's queue: said in words, replaced by the typing dots or the
  // text itself once the assistant starts. Inside the log too: announced when it appears.
  const waiting = el("div", "lc-waiting");
  waiting.hidden = true;
  waiting.textContent = labels.waitingForAssistant;
  log.append(waiting, typing);

  const status = el("div", "lc-status", { role: "status", "aria-live": "polite", "data-state": "connecting" });

  const form = el("form", "lc-composer", { novalidate: "" });
  const inputLabel = el("label", "lc-sr", { for: `${id}-input` });
  inputLabel.textContent = labels.input;
  const input = el("textarea", "lc-input", {
    id: `${id}-input`, rows: "2", placeholder: labels.placeholder, autocomplete: "off",
    "aria-describedby": `${id}-counter ${id}-hint`,
  });
  const row = el("div", "lc-composer-row");
  const counter = el("span", "lc-counter", { id: `${id}-counter` });
  const hint = el("span", "lc-hint", { id: `${id}-hint` });
  hint.textContent = labels.hint;
  const sendButton = el("button", "lc-send", { type: "submit" });
  sendButton.textContent = labels.send;
  row.append(counter, hint, sendButton);
  form.append(inputLabel, input, row);
  root.append(log, status, form);
  return { root, log, waiting, typing, status, form, input, counter, sendButton };
}

/** @typedef {ReturnType<typeof buildView>} View */
/**
 * @typedef {object} MessageNode the nodes of one shown entry
 * @property {HTMLElement} node @property {HTMLElement} bubble @property {HTMLElement} who
 * @property {HTMLElement} body @property {HTMLElement} meta @property {HTMLElement} metaText
 * @property {HTMLButtonElement} retry
 */

/**
 * The messages in the log: one node per transcript entry, reused by key (a participant's
 * message by client_msg_id, any other by seq), so a streamed reply grows in place.
 */
class MessageList {
  /** @param {View} view @param {Labels} labels @param {(id: string) => void} onRetry the Retry button's */
  constructor(view, labels, onRetry) {
    this.view = view;
    this.labels = labels;
    this.onRetry = onRetry;
    /** @type {Map<string, MessageNode>} key -> the entry's nodes */
    this.nodes = new Map();
    /** @type {Map<string, string>} client_msg_id -> text, for messages sent here and not stored yet */
    this.sentHere = new Map();
  }

  /** client.send() returned `id` for `text`. @param {string} id @param {string} text */
  sent(id, text) {
    this.sentHere.set(id, text);
  }

  clear() {
    this.nodes.clear();
  }

  /**
   * @param {Entry[]} transcript
   * @param {{busy: boolean, open: boolean, failures: Map<string, Failure>, show: (entry: Entry, key: string) => string}} now
   *   the client's busy, whether its socket is open, why messages failed, and what to show of an entry
   */
  draw(transcript, now) {
    const { log, waiting, typing } = this.view;
    const seen = new Set();
    const ids = this.idsOf(transcript);
    // the message whose reply is awaited: the last one of the participant's (its reply, queued or
    // without text yet, may follow it)
    let waitingIndex = now.busy && awaited(transcript) ? transcript.length - 1 : -1;
    while (waitingIndex >= 0 && transcript[waitingIndex].role !== "user") waitingIndex -= 1;
    let position = 0;
    transcript.forEach((entry, index) => {
      let key = keyOf(entry, ids[index], index);
      if (seen.has(key)) key = `${key}#${index}`; // never two entries on one node
      seen.add(key);
      const item = this.nodeFor(key);
      const retryId = entry.status === "failed" ? retryIdFor(transcript, ids, index) : null;
      const waitsForConnection = !now.open && (entry.status === "pending" || index === waitingIndex);
      this.drawEntry(item, entry, { retryId, waitsForConnection, failures: now.failures, shown: now.show(entry, key) });
      const at = log.children[position];
      if (at !== item.node) log.insertBefore(item.node, at || waiting);
      position += 1;
    });
    for (const [key, item] of this.nodes) {
      if (!seen.has(key)) {
        item.node.remove();
        this.nodes.delete(key);
      }
    }
    if (log.lastChild !== typing || typing.previousSibling !== waiting) log.append(waiting, typing);
  }

  /**
   * Each entry's client_msg_id. Entries not stored yet may come without one: they are then
   * matched, in order and by text, to the ids client.send() returned here.
   * @param {Entry[]} transcript @returns {Array<?string>}
   */
  idsOf(transcript) {
    for (const entry of transcript) {
      if (entry.client_msg_id && entry.seq !== null && entry.seq !== undefined) this.sentHere.delete(entry.client_msg_id);
    }
    const claimed = new Set(transcript.map((entry) => entry.client_msg_id).filter(Boolean));
    return transcript.map((entry) => {
      if (entry.client_msg_id) return entry.client_msg_id;
      if (entry.role !== "user") return null;
      for (const [id, value] of this.sentHere) {
        if (value === entry.text && !claimed.has(id)) {
          claimed.add(id);
          return id;
        }
      }
      return null;
    });
  }

  /** The nodes shown for `key`, made the first time. @param {string} key @returns {MessageNode} */
  nodeFor(key) {
    const known = this.nodes.get(key);
    if (known) return known;
    const node = el("div", "lc-msg");
    node.dataset.key = key;
    const bubble = el("div", "lc-bubble");
    const who = el("span", "lc-sr");
    const body = el("span", "lc-text");
    bubble.append(who, body);
    const meta = el("div", "lc-meta");
    meta.hidden = true;
    const metaText = el("span", "lc-meta-text");
    const retry = el("button", "lc-retry", { type: "button" });
    retry.textContent = this.labels.retry;
    retry.hidden = true;
    retry.addEventListener("click", () => {
      const target = retry.dataset.id;
      if (target) this.onRetry(target);
    });
    meta.append(metaText, retry);
    node.append(bubble, meta);
    const item = { node, bubble, who, body, meta, metaText, retry };
    this.nodes.set(key, item);
    return item;
  }

  /**
   * @param {MessageNode} item @param {Entry} entry
   * @param {{retryId: ?string, waitsForConnection: boolean, failures: Map<string, Failure>, shown: string}} how
   *   the client_msg_id a failed entry retries, whether it waits for the connection, why messages
   *   failed, and the part of its text to show (a paced reply's, else all of it)
   */
  drawEntry(item, entry, how) {
    const labels = this.labels;
    const { node } = item;
    const role = entry.role === "user" ? "user" : "assistant";
    const status = entry.status || "stored";
    const className = `lc-msg lc-msg--${role} lc-msg--${status}`;
    if (node.className !== className) node.className = className;
    if (entry.seq !== null && entry.seq !== undefined) node.dataset.seq = String(entry.seq);
    else delete node.dataset.seq;
    node.dataset.role = role;
    node.dataset.status = status;
    setText(item.who, `${role === "user" ? labels.you : labels.assistant}: `);
    const body = how.shown;
    setText(item.body, body);
    // Screen readers wait for the end of a streamed (or paced) reply instead of reading every piece.
    toggle(node, "aria-busy", status === "streaming" || body.length < (entry.text || "").length, "true");
    // An assistant entry with nothing to show yet is the typing indicator's job.
    node.hidden = role === "assistant" && !body && status !== "failed";
    item.bubble.hidden = !body; // a failed reply's partial text is dropped: only its notice shows

    let meta = "";
    let retryId = null;
    if (status === "failed") {
      retryId = how.retryId;
      const known = retryId ? how.failures.get(retryId) : undefined;
      const reason = known && labels.errors[known.code] ? ` ${labels.errors[known.code]}` : "";
      meta = (role === "user" ? labels.notSent : labels.replyFailed) + reason;
      if (known && known.retryable === false) retryId = null;
    } else if (role === "user" && how.waitsForConnection) {
      meta = labels.waitingForConnection; // not sent yet, or its reply is awaited (a retry waits for the connection)
    }
    setText(item.metaText, meta);
    item.meta.hidden = !meta;
    item.retry.hidden = !retryId;
    if (retryId) item.retry.dataset.id = retryId;
    else delete item.retry.dataset.id;
  }
}

/**
 * "Waiting for the assistant…" only once a reply has been queued for `afterMs`; the typing
 * dots before (a reply that starts at once never flashes the notice).
 */
class QueueNotice {
  /** @param {number} afterMs @param {() => void} redraw called when the wait is up */
  constructor(afterMs, redraw) {
    this.afterMs = afterMs;
    this.redraw = redraw;
    /** @type {?number} the reply seen queued */
    this.seq = null;
    this.since = 0; // when it was first seen queued
    /** @type {?ReturnType<typeof setTimeout>} one timer, cleared by cancel() */
    this.timer = null;
  }

  /**
   * "queue" only once the reply has been queued for afterMs; "send" (the dots) before.
   * @param {Entry[]} transcript @param {Awaited} what @returns {Awaited}
   */
  decide(transcript, what) {
    if (what !== "queue") return what;
    const seq = transcript[transcript.length - 1].seq;
    if (seq !== this.seq) {
      this.seq = seq;
      this.since = Date.now();
    }
    const left = this.since + this.afterMs - Date.now();
    if (left <= 0) return "queue";
    this.cancel();
    this.timer = setTimeout(this.redraw, left + 10);
    return "send";
  }

  cancel() {
    clearTimeout(this.timer ?? undefined);
  }
}

/**
 * What the end of the transcript waits for: "send" (a message not answered yet, or a reply
 * with no text yet), "queue" (its reply waits in the service's queue), or "" (nothing).
 * @param {Entry[]} transcript @returns {Awaited}
 */
function awaited(transcript) {
  const last = transcript[transcript.length - 1];
  if (!last) return "";
  if (last.role === "user") return last.status !== "failed" ? "send" : "";
  if (last.status === "queued") return "queue";
  return last.status === "streaming" && !last.text ? "send" : "";
}

/**
 * The status line: its `data-state` (kind) and its text.
 * @param {Labels} labels
 * @param {{state: string, chatReady: boolean, fatal: ?Notice, notice: ?Notice, reconnected: boolean, offline: boolean}} now
 *   the client's state, whether a `chat` frame came, the errors to show, whether "Connected
 *   again." is still due, whether the browser is offline
 * @returns {{kind: string, message: string}}
 */
function statusLine(labels, { state, chatReady, fatal, notice, reconnected, offline }) {
  if (fatal) return { kind: "error", message: errorText(labels, fatal) };
  if (state === "closed") { // the client closes itself after a refused start
    return notice ? { kind: "error", message: errorText(labels, notice) } : { kind: "closed", message: labels.closed };
  }
  if (state === "reconnecting" || (state === "connecting" && chatReady)) {
    if (offline) return { kind: "reconnecting", message: labels.offline };
    if (notice && notice.code === "cannot_connect") return { kind: "reconnecting", message: errorText(labels, notice) };
    return { kind: "reconnecting", message: labels.reconnecting };
  }
  if (!chatReady) return { kind: "connecting", message: labels.connecting };
  if (notice) return { kind: "error", message: errorText(labels, notice) };
  return { kind: "open", message: reconnected ? labels.reconnected : "" };
}

/** @param {Labels} labels @param {Notice} notice @returns {string} its label, else the server's message */
function errorText(labels, { code, message }) {
  return labels.errors[code] || message || labels.error;
}

/** The key of an entry's node. @param {Entry} entry @param {?string} id @param {number} index */
function keyOf(entry, id, index) {
  if (entry.role === "user" && id) return `u:${id}`;
  if (entry.seq !== null && entry.seq !== undefined) return `s:${entry.seq}`;
  return `i:${index}`;
}

/**
 * The client_msg_id to retry for a failed entry: its own, or its user message's.
 * @param {Entry[]} transcript @param {Array<?string>} ids @param {number} index
 */
function retryIdFor(transcript, ids, index) {
  if (ids[index]) return ids[index];
  for (let i = index - 1; i >= 0; i -= 1) {
    if (transcript[i].role === "user") return ids[i];
  }
  return null;
}

/**
 * A counting label, called with `args` (a page may also give a plain string).
 * @param {Labels} labels @param {"counter" | "tooLong"} name @param {number} count @param {?number} max
 */
function text(labels, name, count, max) {
  const value = labels[name];
  return typeof value === "function" ? value(count, max) : String(value ?? "");
}

/** Characters as the server counts them (code points, as Python's len). @param {string} value */
function charCount(value) {
  let n = 0;
  for (const _ of value) n += 1;
  return n;
}

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag @param {string} className @param {Record<string, string>} [attrs]
 * @returns {HTMLElementTagNameMap[K]}
 */
function el(tag, className, attrs = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

/** @param {Node} node @param {string} value */
function setText(node, value) {
  if (node.textContent !== value) node.textContent = value;
}

/** @param {Element} node @param {string} attr @param {boolean} on @param {string} [value] */
function toggle(node, attr, on, value = "") {
  if (on) {
    if (node.getAttribute(attr) !== value) node.setAttribute(attr, value);
  } else if (node.hasAttribute(attr)) {
    node.removeAttribute(attr);
  }
}
