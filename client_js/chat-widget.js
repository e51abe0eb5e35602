// The default chat interface, drawn from a ChatClient's transcript. ES module, no dependencies.
//
//   import { mountChat } from "./chat-widget.js";
//   const { client, destroy } = mountChat(document.getElementById("chat"), { url, token, ticket });
//
// The widget only draws: the client merges frames by seq and offset, reconnects, queues
// and resends. Every text goes through textContent, never innerHTML. Contract:
// client_js/API.md; guide: docs/client.md. Style: chat-widget.css (classes prefixed lc-).

import { ChatClient } from "./chat-client.js";

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
  counter: (count, max) => (max ? `${count} / ${max}` : `${count}`),
  tooLong: (count, max) => `${count} / ${max}: ${count - max} too many`,
  connecting: "Connecting…",
  reconnecting: "Connection lost. Reconnecting…",
  offline: "You are offline. Your messages will be sent when the connection is back.",
  reconnected: "Connected again.",
  closed: "The chat is closed.",
  error: "Something went wrong. Please try again.",
  errors: Object.freeze({
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
  }),
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

/** A string label, or a function label called with `args`. */
function text(labels, name, ...args) {
  const value = labels[name];
  return typeof value === "function" ? value(...args) : String(value ?? "");
}

/** Characters as the server counts them (code points, as Python's len). */
function charCount(value) {
  let n = 0;
  for (const _ of value) n += 1;
  return n;
}

function el(tag, className, attrs = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function setText(node, value) {
  if (node.textContent !== value) node.textContent = value;
}

function toggle(node, attr, on, value = "") {
  if (on) {
    if (node.getAttribute(attr) !== value) node.setAttribute(attr, value);
  } else if (node.hasAttribute(attr)) {
    node.removeAttribute(attr);
  }
}

/**
 * Mount the chat in `container`.
 * options: url, token, ticket (required unless `client` is given), labels (partial overrides
 * of DEFAULT_LABELS; `labels.errors` merges per code), autofocus (focus the textarea once the
 * chat is ready), client (an existing ChatClient; then the widget neither starts nor closes
 * it), waitingAfterMs (how long a reply is queued before "Waiting for the assistant…" replaces
 * the typing dots; default 1000), and any other ChatClient option (heartbeatMs, backoffMaxMs, ...), passed through.
 * Returns {client, destroy, ready}: `ready` is the promise of client.start() (resolves to
 * the client, or to null after a failure shown on the status line).
 */
export function mountChat(container, options = {}) {
  if (!container || typeof container.appendChild !== "function") {
    throw new TypeError("mountChat: the first argument must be a DOM element");
  }
  const given = options.labels || {};
  const labels = {
    ...DEFAULT_LABELS,
    ...(given.queued !== undefined && { waitingForConnection: given.queued }), // the label's former name
    ...given,
    errors: { ...DEFAULT_LABELS.errors, ...(given.errors || {}) },
  };
  const clientOptions = {};
  for (const [name, value] of Object.entries(options)) {
    if (!WIDGET_OPTIONS.has(name)) clientOptions[name] = value;
  }
  const ownClient = !options.client;
  const client = options.client || new ChatClient(clientOptions);
  const id = `lc-${++instances}`;

  // ---- the DOM --------------------------------------------------------------------------
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
  container.appendChild(root);

  // ---- state the widget keeps (the transcript itself is the client's) -------------------
  const nodes = new Map(); // key -> {node, text, meta, metaText, retry}
  const errorsById = new Map(); // client_msg_id -> {code, retryable}
  const sent = new Map(); // client_msg_id -> text, for messages sent here and not stored yet
  let ready = false; // a `chat` frame has arrived
  let fatal = null; // {code, message}: the chat cannot go on in this page
  let notice = null; // {code, message}: the last error not tied to a shown message
  let reconnectedUntil = 0;
  let reconnectedTimer = null;
  const waitingAfterMs = options.waitingAfterMs ?? WAITING_AFTER_MS;
  let queuedSeq = null; // the reply seen queued, and since when
  let queuedSince = 0;
  let waitingTimer = null;
  let lastState = client.state;
  let wasReconnecting = false;
  let destroyed = false;
  let scrollPending = false;
  const cleanups = [];

  function listen(target, type, fn) {
    target.addEventListener(type, fn);
    cleanups.push(() => target.removeEventListener(type, fn));
  }

  function errorText(code, fallback) {
    return labels.errors[code] || fallback || labels.error;
  }

  // ---- drawing ---------------------------------------------------------------------------
  /**
   * Each entry's client_msg_id. Entries not stored yet may come without one: they are then
   * matched, in order and by text, to the ids client.send() returned here.
   */
  function idsOf(transcript) {
    for (const entry of transcript) {
      if (entry.client_msg_id && entry.seq !== null && entry.seq !== undefined) sent.delete(entry.client_msg_id);
    }
    const claimed = new Set(transcript.map((entry) => entry.client_msg_id).filter(Boolean));
    return transcript.map((entry) => {
      if (entry.client_msg_id) return entry.client_msg_id;
      if (entry.role !== "user") return null;
      for (const [id, value] of sent) {
        if (value === entry.text && !claimed.has(id)) {
          claimed.add(id);
          return id;
        }
      }
      return null;
    });
  }

  function keyOf(entry, id, index) {
    if (entry.role === "user" && id) return `u:${id}`;
    if (entry.seq !== null && entry.seq !== undefined) return `s:${entry.seq}`;
    return `i:${index}`;
  }

  function nodeFor(key, entry) {
    let item = nodes.get(key);
    if (item) return item;
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
    retry.textContent = labels.retry;
    retry.hidden = true;
    retry.addEventListener("click", () => {
      const target = retry.dataset.id;
      if (!target) return;
      errorsById.delete(target);
      notice = null;
      input.focus(); // the button goes away with the failure: keep keyboard users in place
      client.retry(target);
      render();
    });
    meta.append(metaText, retry);
    node.append(bubble, meta);
    item = { node, bubble, who, body, meta, metaText, retry };
    nodes.set(key, item);
    return item;
  }

  /** The client_msg_id to retry for a failed entry: its own, or its user message's. */
  function retryIdFor(transcript, ids, index) {
    if (ids[index]) return ids[index];
    for (let i = index - 1; i >= 0; i -= 1) {
      if (transcript[i].role === "user") return ids[i];
    }
    return null;
  }

  function drawEntry(item, entry, transcript, ids, index, waitingIndex) {
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
    const body = entry.text || "";
    setText(item.body, body);
    // Screen readers wait for the end of a streamed reply instead of reading every piece.
    toggle(node, "aria-busy", status === "streaming", "true");
    // An assistant entry with nothing to show yet is the typing indicator's job.
    node.hidden = role === "assistant" && !body && status !== "failed";
    item.bubble.hidden = !body; // a failed reply's partial text is dropped: only its notice shows

    let meta = "";
    let retryId = null;
    if (status === "failed") {
      retryId = retryIdFor(transcript, ids, index);
      const known = retryId ? errorsById.get(retryId) : undefined;
      const reason = known && labels.errors[known.code] ? ` ${labels.errors[known.code]}` : "";
      meta = (role === "user" ? labels.notSent : labels.replyFailed) + reason;
      if (known && known.retryable === false) retryId = null;
    } else if (role === "user" && client.state !== "open" && (status === "pending" || index === waitingIndex)) {
      meta = labels.waitingForConnection; // not sent yet, or its reply is awaited (a retry waits for the connection)
    }
    setText(item.metaText, meta);
    item.meta.hidden = !meta;
    item.retry.hidden = !retryId;
    if (retryId) item.retry.dataset.id = retryId;
    else delete item.retry.dataset.id;
  }

  function drawTranscript(transcript) {
    const seen = new Set();
    const ids = idsOf(transcript);
    // the message whose reply is awaited: the last one of the participant's (its reply, queued or
    // without text yet, may follow it)
    let waitingIndex = client.busy && awaited(transcript) ? transcript.length - 1 : -1;
    while (waitingIndex >= 0 && transcript[waitingIndex].role !== "user") waitingIndex -= 1;
    let position = 0;
    transcript.forEach((entry, index) => {
      let key = keyOf(entry, ids[index], index);
      if (seen.has(key)) key = `${key}#${index}`; // never two entries on one node
      seen.add(key);
      const item = nodeFor(key, entry);
      drawEntry(item, entry, transcript, ids, index, waitingIndex);
      const at = log.children[position];
      if (at !== item.node) log.insertBefore(item.node, at || waiting);
      position += 1;
    });
    for (const [key, item] of nodes) {
      if (!seen.has(key)) {
        item.node.remove();
        nodes.delete(key);
      }
    }
    if (log.lastChild !== typing || typing.previousSibling !== waiting) log.append(waiting, typing);
  }

  /**
   * What the end of the transcript waits for: "send" (a message not answered yet, or a reply
   * with no text yet), "queue" (its reply waits in the service's queue), or "" (nothing).
   */
  function awaited(transcript) {
    const last = transcript[transcript.length - 1];
    if (!last) return "";
    if (last.role === "user") return last.status !== "failed" ? "send" : "";
    if (last.status === "queued") return "queue";
    return last.status === "streaming" && !last.text ? "send" : "";
  }

  /** "queue" only once the reply has been queued for waitingAfterMs; "send" (the dots) before. */
  function patience(transcript, what) {
    if (what !== "queue") return what;
    const seq = transcript[transcript.length - 1].seq;
    if (seq !== queuedSeq) {
      queuedSeq = seq;
      queuedSince = Date.now();
    }
    const left = queuedSince + waitingAfterMs - Date.now();
    if (left <= 0) return "queue";
    clearTimeout(waitingTimer);
    waitingTimer = setTimeout(render, left + 10); // one timer, cleared by destroy()
    return "send";
  }

  function drawStatus() {
    const state = client.state;
    let kind = "";
    let message = "";
    if (fatal) {
      kind = "error";
      message = errorText(fatal.code, fatal.message);
    } else if (state === "closed") {
      kind = notice ? "error" : "closed"; // the client closes itself after a refused start
      message = notice ? errorText(notice.code, notice.message) : labels.closed;
    } else if (state === "reconnecting" || (state === "connecting" && ready)) {
      kind = "reconnecting";
      if (typeof navigator !== "undefined" && navigator.onLine === false) message = labels.offline;
      else if (notice && notice.code === "cannot_connect") message = errorText(notice.code, notice.message);
      else message = labels.reconnecting;
    } else if (!ready) {
      kind = "connecting";
      message = labels.connecting;
    } else if (notice) {
      kind = "error";
      message = errorText(notice.code, notice.message);
    } else if (Date.now() < reconnectedUntil) {
      kind = "open";
      message = labels.reconnected;
    } else {
      kind = "open";
    }
    if (status.dataset.state !== kind) status.dataset.state = kind;
    setText(status, message);
  }

  function drawComposer() {
    const max = client.limits && client.limits.max_chars;
    const count = charCount(input.value.trim());
    const over = Boolean(max) && count > max;
    const near = Boolean(max) && !over && count >= Math.floor(max * 0.9);
    setText(counter, over ? text(labels, "tooLong", count, max) : text(labels, "counter", count, max));
    counter.classList.toggle("lc-counter--warn", near);
    counter.classList.toggle("lc-counter--over", over);
    toggle(input, "aria-invalid", over, "true");

    const locked = Boolean(client.busy) || Boolean(fatal) || client.state === "closed";
    input.readOnly = locked;
    toggle(input, "aria-readonly", locked, "true");
    form.classList.toggle("lc-composer--locked", locked);
    const canSend = ready && !locked && count > 0 && !over;
    toggle(sendButton, "aria-disabled", !canSend, "true");
    return { count, over, canSend };
  }

  function render() {
    if (destroyed) return;
    const transcript = Array.isArray(client.transcript) ? client.transcript : [];
    const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight <= NEAR_BOTTOM_PX;
    drawTranscript(transcript);
    const live = client.state === "open" && ready;
    const what = patience(transcript, awaited(transcript));
    waiting.hidden = !(live && what === "queue");
    typing.hidden = !(live && what === "send");
    drawStatus();
    drawComposer();
    if (nearBottom || scrollPending) {
      log.scrollTop = log.scrollHeight;
      scrollPending = false;
    }
  }

  // ---- sending ---------------------------------------------------------------------------
  function submit() {
    const { count, over, canSend } = drawComposer();
    if (!canSend) {
      if (over) {
        notice = { code: "message_too_long" };
        drawStatus();
      }
      return;
    }
    if (count === 0) return;
    const value = input.value.trim();
    notice = null;
    try {
      sent.set(client.send(value), value);
    } catch (err) {
      notice = { code: "internal", message: (err && err.message) || labels.error };
      render();
      return;
    }
    input.value = "";
    scrollPending = true;
    render();
  }

  listen(form, "submit", (event) => {
    event.preventDefault();
    submit();
  });
  listen(input, "keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.altKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault(); // Enter sends (also with Ctrl/Cmd); Shift+Enter keeps the newline
    submit();
  });
  listen(input, "input", () => {
    if (notice && notice.code === "message_too_long") notice = null;
    drawComposer();
    drawStatus();
  });

  // ---- the client's events -----------------------------------------------------------------
  listen(client, "transcript", render);
  listen(client, "chat", () => {
    ready = true;
    render();
    if (options.autofocus && document.activeElement !== input) input.focus();
  });
  listen(client, "state", (event) => {
    const state = (event.detail && event.detail.state) || client.state;
    if (state === "open" && notice && notice.code === "cannot_connect") notice = null; // it could, after all
    if (state === "reconnecting" || (state === "connecting" && ready)) wasReconnecting = true;
    if (state === "open" && wasReconnecting && lastState !== "open") {
      wasReconnecting = false;
      reconnectedUntil = Date.now() + RECONNECTED_MS;
      clearTimeout(reconnectedTimer);
      reconnectedTimer = setTimeout(render, RECONNECTED_MS + 50);
    }
    lastState = state;
    render();
  });
  listen(client, "ack", (event) => {
    const detail = event.detail || {};
    if (detail.client_msg_id) errorsById.delete(detail.client_msg_id);
    render();
  });
  listen(client, "message", render);
  listen(client, "error", (event) => {
    const detail = event.detail || {};
    if (detail.code === "not_connected") {
      // the client reconnects by itself: nothing to tell
    } else if (FATAL.has(detail.code)) {
      fatal = { code: detail.code, message: detail.message };
    } else if (detail.client_msg_id) {
      errorsById.set(detail.client_msg_id, { code: detail.code, retryable: detail.retryable });
      // A refusal the participant must know about even if the message scrolled away.
      if (!detail.retryable) notice = { code: detail.code, message: detail.message };
    } else if (detail.seq === undefined || detail.seq === null) {
      notice = { code: detail.code, message: detail.message };
    }
    render();
  });
  if (typeof window !== "undefined") {
    listen(window, "online", render);
    listen(window, "offline", render);
  }

  render();
  const started = ownClient
    ? Promise.resolve()
        .then(() => client.start())
        .then(
          () => {
            ready = true;
            render();
            return client;
          },
          (err) => {
            if (destroyed) return null;
            const code = (err && (err.code || (err.detail && err.detail.code))) || "internal";
            fatal = { code, message: err && err.message };
            render();
            return null;
          },
        )
    : Promise.resolve(client);
  if (!ownClient && client.chatId) ready = true;
  render();

  function destroy() {
    if (destroyed) return;
    destroyed = true;
    clearTimeout(reconnectedTimer);
    clearTimeout(waitingTimer);
    for (const undo of cleanups.splice(0)) undo();
    if (ownClient) client.close();
    root.remove();
    nodes.clear();
  }

  return { client, destroy, ready: started };
}
