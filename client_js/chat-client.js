// @ts-check
// The participant's side of the chat service: an ES module without dependencies, built to
// client_js/API.md on the protocol of docs/protocol.md.

/**
 * @typedef {"idle" | "connecting" | "open" | "reconnecting" | "closed"} State
 * @typedef {"user" | "assistant"} Role
 * @typedef {"pending" | "queued" | "streaming" | "stored" | "failed"} Status
 * @typedef {{seq: ?number, role: Role, text: string, status: Status, client_msg_id?: string}} Entry a transcript entry
 * @typedef {Entry & {seq: number}} Numbered an entry with its seq: stored, queued, streaming or failed
 * @typedef {{id: string, text: string, status: "pending" | "failed", seq: ?number, resends: number, throttles?: number}} Outgoing
 *   a send not stored yet, or the send in progress (`resends`: reply timeouts or refusals in a row;
 *   `throttles`: times API Gateway throttled it, its backoff's attempt)
 * @typedef {{max_chars: number, max_user_messages: number, user_messages: number}} Limits
 * @typedef {{chatId: string, limits: Limits}} Started what start() resolves to
 * @typedef {{code: string, message: string, retryable: boolean, client_msg_id?: string, seq?: number}} ErrorDetail
 * @typedef {"dead" | "beat" | "stable" | "recycle" | "reply" | "retry"} TimerName
 * @typedef {WebSocket & {terminate?: () => void}} Socket a browser WebSocket, or node's `ws` (which can drop one at once)
 * @typedef {new (url: string) => Socket} SocketClass
 * @typedef {typeof DEFAULTS & {url?: string, token?: string, ticket?: string, WebSocket?: SocketClass}} Options
 */
/**
 * Frames from the server (docs/protocol.md), as this client reads them.
 * @typedef {{seq: number, role: Role, text: string, client_msg_id?: string}} StoredMessage
 * @typedef {{chat_id: string, messages?: StoredMessage[], more?: boolean, replying?: ?number}} HistoryFrame
 * @typedef {{words_per_minute: number, jitter?: number}} Pace the bot's reading pace (display only)
 * @typedef {HistoryFrame & {limits: Limits, pace?: Pace}} ChatFrame
 * @typedef {{client_msg_id: string, seq: number, duplicate?: boolean}} AckFrame
 * @typedef {{seq: number, offset: number, text: string}} DeltaFrame
 * @typedef {{seq: number, client_msg_id: string}} QueuedFrame
 * @typedef {StoredMessage & {type: "message", chat_id: string}} MessageFrame
 * @typedef {{code: string, message: string, retryable?: boolean, client_msg_id?: string, seq?: number}} ErrorFrame
 */

const DEFAULTS = {
  heartbeatMs: 240000, pongTimeoutMs: 15000, maxConnectionMs: 6900000, backoffBaseMs: 500,
  backoffMaxMs: 30000, stableAfterMs: 10000, replyTimeoutMs: 20000, replyMaxWaitMs: 600000,
};
const MAX_RESENDS = 3; // reply timeouts of an unacked send (or `reply_in_progress` refusals) in a row before it fails
const OPEN = 1; // WebSocket.OPEN
const UNREACHABLE_AFTER = 5; // handshakes in a row that never opened
const rnd = () => Math.random().toString(36).slice(2);

/**
 * A transcript entry.
 * @template {?number} S
 * @param {S} seq @param {Role} role @param {string} text @param {Status} status @param {string} [id]
 * @returns {Entry & {seq: S}}
 */
const entry = (seq, role, text, status, id) => ({ seq, role, text, status, ...(id && { client_msg_id: id }) });

/**
 * `have` with `piece` applied at `offset`, counted in code points as the server counts (Python
 * str indexes), not in UTF-16 units: null when `offset` is past the end of `have` (a gap). A
 * piece that repeats what `have` already holds there changes nothing (a resumed stream never
 * shortens the text); any other piece replaces everything from `offset`.
 * @param {string} have @param {number} offset @param {string} piece @returns {?string}
 */
export function applyDelta(have, offset, piece) {
  let at = 0; // UTF-16 index of code point number `offset`
  for (let n = 0; n < offset; n++) {
    if (at >= have.length) return null;
    at += /** @type {number} */ (have.codePointAt(at)) > 0xffff ? 2 : 1;
  }
  return have.startsWith(piece, at) ? have : have.slice(0, at) + piece;
}

/**
 * A retry's delay with full jitter: uniform in [0, min(maxMs, baseMs * 2^attempt)] (attempt 0 first),
 * so clients that failed together do not come back together. Shared by reconnects, throttled sends
 * and survey.js's entry.
 * @param {number} attempt @param {number} baseMs @param {number} maxMs @param {() => number} [random]
 */
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  return Math.round(random() * Math.min(maxMs, baseMs * 2 ** attempt));
}

/** A client_msg_id: crypto.randomUUID() where it exists (secure contexts), else time and randomness. */
export const newId = () => globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${rnd()}${rnd()}`;

/**
 * What each frame type from the server does (docs/protocol.md). Any other frame (`pong`, or one
 * that is not JSON) only proves the socket alive.
 * @type {ReadonlyMap<string, (client: ChatClient, frame: any) => void>}
 */
const FRAME_HANDLERS = new Map([
  ["chat", (client, frame) => client._onChat(frame)],
  ["history", (client, frame) => client._onHistory(frame)],
  ["ack", (client, frame) => client._onAck(frame)],
  ["delta", (client, frame) => client._onDelta(frame)],
  ["queued", (client, frame) => client._onQueued(frame)],
  ["message", (client, frame) => client._onMessage(frame)],
  ["error", (client, frame) => client._onError(frame)],
]);

/**
 * The connection to the chat service for one chat (options and events: client_js/API.md).
 *
 * One message at a time is a turn: pending (not acked; resent after each replyTimeoutMs, at
 * most MAX_RESENDS times) → acked (`ack`: stored as seq) → queued (`queued`: its reply, seq + 1,
 * waits for the assistant) → streaming (`delta`s) → stored (`message`) or failed (`error`, or
 * `reply_timeout` from the client). From acked on, the message is never resent blindly: a
 * reply timeout asks the service (`history`) and resends only if no one has the reply.
 */
export class ChatClient extends EventTarget {
  /** @param {Partial<Options>} [options] url, token, ticket, and the optional settings of DEFAULTS (and WebSocket) */
  constructor(options = {}) {
    super();
    const given = Object.entries(options).filter(([, value]) => value !== undefined);
    /** @type {Options} */
    this.options = { ...DEFAULTS, ...Object.fromEntries(given) };
    /** @type {State} */
    this.state = "idle";
    /** @type {?string} from the `chat` frame */
    this.chatId = null;
    /** @type {?Limits} from the `chat` frame; user_messages counts up with each ack */
    this.limits = null;
    /** @type {?Pace} the bot's pace from the `chat` frame: for display only (chat-widget.js) */
    this.pace = null;

    /** @type {SocketClass} */
    this._WebSocket = this.options.WebSocket || globalThis.WebSocket;
    if (!this._WebSocket) throw new TypeError("no WebSocket here: pass options.WebSocket");
    /** @type {?Socket} the socket in use; frames and closes of any other are ignored */
    this._ws = null;
    this._wsOpened = false; // the socket in use finished its handshake
    this._ready = false; // `start` answered on this socket
    this._resuming = false; // the `chat` frame came: the send in progress goes again once the history is read
    this._attempt = 0; // reconnects since the last stable connection: the backoff's exponent
    this._unreachable = 0; // attempts in a row whose handshake never opened
    /** @type {Map<TimerName, ReturnType<typeof setTimeout>>} */
    this._timers = new Map();
    /** @type {?Promise<Started>} what start() returns, from the first call on */
    this._started = null;
    /** @type {?{resolve: (started: Started) => void, reject: (error: Error) => void}} settles _started */
    this._settle = null;

    /** @type {Map<number, Numbered>} seq -> transcript entry: stored, queued, streaming or failed */
    this._seqs = new Map();
    /** @type {Outgoing[]} sends not stored yet, in order */
    this._outbox = [];
    /** @type {?Outgoing} the send in progress, until its reply is stored or fails */
    this._turn = null;
    /** @type {?number} seq of a reply queued or being written (-1: being asked) */
    this._awaiting = null;
    this._waits = 0; // reply timeouts in a row for an acked reply, without a delta: bounded by replyMaxWaitMs
    this._checking = false; // a `history` asked what became of the awaited reply: its answer decides
    this._dirty = false; // the transcript changed since the last `transcript` event
    this._wasBusy = false; // `busy` at the last `transcript` event
    this._wake = this._wake.bind(this); // a listener of window and document, removed by close()
  }

  // -- the API
  /** @returns {Promise<Started>} */
  start() {
    if (this.state === "closed") return Promise.reject(new Error("the client is closed"));
    if (!this._started) {
      this._started = new Promise((resolve, reject) => {
        this._settle = { resolve, reject };
      });
      this._started.catch(() => {}); // never an unhandled rejection
      this._listen(true);
      try {
        this._connect();
      } catch (error) { // a bad url
        this._settle?.reject(/** @type {Error} */ (error));
        this.close();
      }
    }
    return this._started;
  }

  /** @param {string} text @returns {string} the client_msg_id */
  send(text) {
    const id = newId();
    this._outbox.push({ id, text: String(text), status: "pending", seq: null, resends: 0 });
    this._changed();
    return id;
  }

  /**
   * Resend a failed message, or the message of a failed reply, with the SAME client_msg_id.
   * @param {string} id @returns {boolean} false when there is nothing to retry
   */
  retry(id) {
    if (this._turn?.id === id || this._outbox.some((i) => i.id === id && i.status === "pending")) return false;
    let item = this._outbox.find((i) => i.id === id);
    if (item) this._outbox.splice(this._outbox.indexOf(item), 1);
    else {
      const user = [...this._seqs.values()].find((m) => m.role === "user" && m.client_msg_id === id);
      const reply = user && this._seqs.get(user.seq + 1);
      if (!user || (reply && reply.status !== "failed")) return false;
      if (reply) this._seqs.delete(reply.seq);
      item = { id, text: user.text, seq: user.seq, status: "pending", resends: 0 }; // stored already: not shown twice
    }
    item.status = "pending";
    item.resends = 0;
    this._outbox.push(item);
    this._changed();
    return true;
  }

  close() {
    if (this.state === "closed") return;
    this._listen(false);
    for (const name of [...this._timers.keys()]) this._clear(name);
    try {
      this._ws?.close(1000);
    } catch {}
    this._ws = null;
    this._ready = false;
    this._setState("closed");
    this._settle?.reject(new Error("the client was closed"));
  }

  /** @returns {Entry[]} */
  get transcript() {
    /** @type {Entry[]} */
    const numbered = [...this._seqs.values()].sort((a, b) => a.seq - b.seq).map((m) => ({ ...m }));
    const pending = this._outbox.filter((i) => i.seq == null);
    return numbered.concat(pending.map((i) => entry(null, "user", i.text, i.status, i.id)));
  }

  get busy() {
    return !!this._turn || this._awaiting != null || this._outbox.some((i) => i.status === "pending");
  }

  /**
   * @param {string} type @param {(detail: any, event: CustomEvent) => void} fn called as fn(detail, event)
   * @returns {() => void} a function that unsubscribes
   */
  on(type, fn) {
    /** @param {Event} event */
    const listener = (event) => fn(/** @type {CustomEvent} */ (event).detail, /** @type {CustomEvent} */ (event));
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  // -- the socket
  _connect() {
    this._clear("retry");
    if (this.state === "idle") this._setState("connecting"); // later attempts stay "reconnecting"
    this._wsOpened = false;
    /** @type {Socket} */
    let ws;
    try {
      ws = new this._WebSocket(`${this.options.url}?token=${encodeURIComponent(String(this.options.token))}`);
    } catch (err) { // a malformed URL: nothing to retry
      const message = String((/** @type {any} */ (err))?.message || err);
      this._emit("error", { code: "connect_failed", message, retryable: false });
      this.close();
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (ws === this._ws) this._opened();
    };
    ws.onmessage = (event) => {
      if (ws === this._ws) this._frame(event.data);
    };
    ws.onclose = () => this._lost(ws);
    ws.onerror = () => {}; // a close event follows
    this._timer("dead", this.options.pongTimeoutMs, () => this._lost(ws)); // a handshake that hangs
  }

  _opened() {
    const o = this.options;
    this._wsOpened = true;
    this._unreachable = 0;
    this._setState("open");
    this._send({ action: "start", ticket: o.ticket });
    this._timer("dead", o.pongTimeoutMs, () => this._lost(this._ws)); // the answer must come
    this._timer("stable", o.stableAfterMs, () => {
      this._attempt = 0;
    });
    if (o.maxConnectionMs > 0) this._timer("recycle", o.maxConnectionMs, () => this._lost(this._ws, true));
    this._beat();
  }

  _beat() {
    if (this.options.heartbeatMs <= 0) return;
    this._timer("beat", this.options.heartbeatMs, () => {
      this._probe();
      this._beat();
    });
  }

  /** A ping: no frame at all within pongTimeoutMs and the socket is dead. */
  _probe() {
    const ws = this._ws;
    if (this._send({ action: "ping" }) && !this._timers.has("dead")) this._timer("dead", this.options.pongTimeoutMs, () => this._lost(ws));
  }

  /**
   * The socket closed or is dead: drop it, reconnect after a jittered backoff (at once if planned).
   * @param {?Socket} ws @param {boolean} [planned] a recycle before API Gateway's 2-hour cap
   */
  _lost(ws, planned = false) {
    if (!ws || ws !== this._ws || this.state === "closed") return;
    for (const name of /** @type {const} */ (["dead", "beat", "stable", "recycle", "reply"])) this._clear(name);
    this._ws = null;
    this._ready = false;
    // Browsers hide a refused handshake (an expired token's 401) behind a plain close: after a
    // few attempts that never opened, tell the page, and go on trying.
    if (!this._wsOpened && ++this._unreachable === UNREACHABLE_AFTER) {
      this._emit("error", { code: "cannot_connect", retryable: true,
        message: "The chat service cannot be reached. If this goes on, reload the page." });
    }
    try { // node's `ws` drops a dead socket at once
      if (ws.terminate) ws.terminate();
      else ws.close();
    } catch {}
    const o = this.options;
    const delayMs = planned ? 0 : backoffDelay(this._attempt, o.backoffBaseMs, o.backoffMaxMs);
    if (!planned) this._attempt++;
    this._setState("reconnecting", { attempt: this._attempt, delayMs });
    this._timer("retry", delayMs, () => this._connect());
  }

  /**
   * The page is back (online, visible): reconnect now, or check the socket.
   * @param {Event} [event]
   */
  _wake(event) {
    if (event?.type === "visibilitychange" && globalThis.document?.visibilityState !== "visible") return;
    if (this.state === "reconnecting" && this._timers.has("retry")) this._connect();
    else if (this.state === "open") this._probe();
  }

  /** @param {boolean} on */
  _listen(on) {
    /** @type {Array<[EventTarget | undefined, string]>} */
    const wakers = [[globalThis.window, "online"], [globalThis.document, "visibilitychange"]];
    for (const [target, type] of wakers) {
      if (!target) continue; // not in a browser
      if (on) target.addEventListener(type, this._wake);
      else target.removeEventListener(type, this._wake);
    }
  }

  /** @param {object} frame @returns {boolean} whether it went out (the socket is open) */
  _send(frame) {
    if (this._ws?.readyState !== OPEN) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  // -- frames from the server
  /** @param {string} data */
  _frame(data) {
    this._clear("dead"); // any frame proves the socket alive
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {}
    if (frame && !frame.type && frame.message) { // API Gateway's own error; "Too Many Requests": a route's throttle
      const code = frame.message === "Too Many Requests" ? "throttled" : "internal";
      frame = { type: "error", code, message: frame.message, retryable: true };
    }
    FRAME_HANDLERS.get(frame?.type)?.(this, frame);
    this._changed();
  }

  /** @param {ChatFrame} f */
  _onChat(f) {
    this.chatId = f.chat_id;
    this.limits = f.limits;
    this.pace = f.pace ?? null;
    this._ready = true;
    this._resuming = true;
    this._onHistory(f);
    this._emit("chat", { chatId: f.chat_id, limits: f.limits });
    this._settle?.resolve({ chatId: f.chat_id, limits: f.limits });
  }

  /**
   * A `chat` or `history` answer: what is stored, and which reply is being written now.
   * @param {HistoryFrame} f
   */
  _onHistory(f) {
    (f.messages || []).forEach((m) => this._store(m));
    if (f.more && f.messages?.length) { // the last page decides the rest
      this._send({ action: "history", chat_id: f.chat_id, after_seq: f.messages[f.messages.length - 1].seq });
      return;
    }
    const replying = f.replying != null && this._seqs.get(f.replying)?.status !== "stored" ? f.replying : null;
    const t = this._turn;
    const ours = t?.seq != null ? t.seq + 1 : null; // the turn's reply, once its message is stored
    for (const [seq, e] of [...this._seqs]) {
      if (seq === replying) continue;
      if (e.status === "streaming") this._failReply(seq); // broke off
      else if (e.status === "queued" && seq !== ours) { // no one has it
        this._seqs.delete(seq);
        this._dirty = true;
      }
    }
    this._awaiting = replying;
    if (replying != null) this._armReply();
    const checking = this._checking;
    this._checking = false;
    if (this._resuming) {
      // after a (re)connect: the send in progress goes again, unless its reply is queued or streams here anyway
      this._resuming = false;
      this._reconcile();
      if (this._turn && !(ours != null && replying === ours)) this._sendTurn();
    } else if (t && checking && ours != null && replying == null && this._seqs.get(ours)?.status !== "stored") {
      this._resend(t); // the answer to a reply timeout: no one is writing the reply, nor has it queued
    }
  }

  /** @param {AckFrame} f */
  _onAck(f) {
    const t = this._turn?.id === f.client_msg_id ? this._turn : null;
    const text = t?.text ?? this._outbox.find((i) => i.id === f.client_msg_id)?.text;
    if (text != null) this._store({ seq: f.seq, role: "user", text, client_msg_id: f.client_msg_id });
    if (!f.duplicate && this.limits) this.limits.user_messages++;
    if (t) this._progress();
    this._emit("ack", { client_msg_id: f.client_msg_id, seq: f.seq, duplicate: !!f.duplicate });
  }

  /**
   * A piece of a reply, placed by its `offset` in code points (see applyDelta).
   * @param {DeltaFrame} f
   */
  _onDelta(f) {
    const e = this._seqs.get(f.seq);
    if (e?.status === "stored") return; // the message frame is authoritative
    const have = e?.status === "streaming" ? e.text : "";
    const text = applyDelta(have, f.offset, f.text);
    if (text == null) return; // a gap: a resumed stream restarts at 0, the message fills it
    this._awaiting ??= f.seq;
    this._waits = 0;
    if (this._turn && (this._turn.seq == null || this._turn.seq + 1 === f.seq)) this._progress();
    if (e?.status === "streaming" && text === have) return; // a repeat: news, but nothing to show
    this._seqs.set(f.seq, entry(f.seq, "assistant", text, "streaming"));
    this._dirty = true;
    this._emit("delta", { seq: f.seq, text, piece: f.text });
  }

  /**
   * The reply `seq` waits in the server's queue for the assistant. Ignored once the reply has
   * news of its own (a delta, the message, a failure): frames about a reply and answers to a
   * send come from different functions, so a `queued` may arrive after them.
   * @param {QueuedFrame} f
   */
  _onQueued(f) {
    const t = this._turn?.id === f.client_msg_id ? this._turn : null;
    if (t && t.seq == null) { // its ack was lost: the message is stored as seq - 1 all the same
      this._store({ seq: f.seq - 1, role: "user", text: t.text, client_msg_id: t.id });
      this._progress();
    }
    const e = this._seqs.get(f.seq);
    if (e && e.status !== "queued") return;
    this._armReply(); // news: the next check comes a full replyTimeoutMs later
    this._awaiting ??= f.seq;
    if (e) return; // said again (a resend): nothing changed
    this._seqs.set(f.seq, entry(f.seq, "assistant", "", "queued", f.client_msg_id));
    this._dirty = true;
    this._emit("queued", { seq: f.seq, client_msg_id: f.client_msg_id });
  }

  /** @param {MessageFrame} f */
  _onMessage(f) {
    const { type, chat_id, ...message } = f;
    this._store(message);
    this._waits = 0;
    this._emit("message", { message });
  }

  /** @param {ErrorFrame} f */
  _onError({ code, message, retryable, client_msg_id: id, seq }) {
    /** @type {ErrorDetail} */
    const detail = { code, message, retryable: !!retryable, ...(id != null && { client_msg_id: id }), ...(seq != null && { seq }) };
    const t = this._turn;
    if (code === "not_connected") this._lost(this._ws); // the server forgot this socket
    else if (code === "throttled" && this._ready) {
      // API Gateway refused a frame without running it, and does not say which: an unacked send
      // goes again (same client_msg_id, so idempotent) after a growing backoff instead of a whole
      // replyTimeoutMs, for as long as it is throttled (never failed for it); anything else is
      // asked again by its own timer (heartbeat, reply timeout)
      if (t && t.seq == null) {
        const o = this.options;
        const attempt = t.throttles ?? 0;
        t.throttles = attempt + 1;
        this._timer("reply", backoffDelay(attempt, o.backoffBaseMs, o.backoffMaxMs), () => this._sendTurn());
      }
    } else if (seq != null) {
      this._failReply(seq, id); // partial text dropped; retry(id) generates it again
      if (t && (t.id === id || (t.seq != null && t.seq + 1 === seq))) this._endTurn();
    } else if (id != null && t?.id === id) {
      this._endTurn();
      if (code === "reply_in_progress" && ++t.resends <= MAX_RESENDS) {
        this._awaiting = -1; // again once that reply is done: which one is it?
        this._send({ action: "history", chat_id: this.chatId, after_seq: this._lastSeq() });
        this._armReply();
      } else this._failTurn(t);
    } else if (!this._ready && id == null) {
      if (retryable) this._lost(this._ws); // `start` refused for now: again after a backoff
      else {
        this._settle?.reject(Object.assign(new Error(message || code), detail));
        this._emit("error", detail);
        this.close();
        return;
      }
    }
    this._emit("error", detail);
  }

  // -- the transcript and the send queue
  /** @param {StoredMessage} m */
  _store(m) {
    const had = this._seqs.get(m.seq);
    if (had?.status !== "stored" || had.text !== m.text) this._dirty = true;
    const id = m.client_msg_id;
    this._seqs.set(m.seq, entry(m.seq, m.role, m.text, "stored", id));
    if (id) this._outbox = this._outbox.filter((i) => i.id !== id);
    if (id && this._turn?.id === id) {
      this._turn.seq = m.seq;
      if (this._seqs.get(m.seq + 1)?.status !== "stored") this._awaiting = m.seq + 1;
    }
  }

  /** @param {number} seq @param {string} [id] the user message's client_msg_id */
  _failReply(seq, id = this._seqs.get(seq - 1)?.client_msg_id) {
    this._seqs.set(seq, entry(seq, "assistant", "", "failed", id));
    if (this._awaiting === seq) this._awaiting = null;
    this._dirty = true;
  }

  /** The turn ends when its reply is stored; so does the wait for an awaited reply. */
  _reconcile() {
    const t = this._turn;
    if (t?.seq != null && this._seqs.get(t.seq + 1)?.status === "stored") this._endTurn();
    if (this._awaiting != null && this._seqs.get(this._awaiting)?.status === "stored") this._awaiting = null;
    if (!this._turn && this._awaiting == null) this._clear("reply");
  }

  _endTurn() {
    this._turn = null;
    this._clear("reply");
  }

  /**
   * A failed send shows failed if it was never stored, else its reply does: retry(id) either way.
   * @param {Outgoing} t
   */
  _failTurn(t) {
    this._endTurn();
    if (t.seq == null) {
      t.status = "failed";
      return;
    }
    this._outbox = this._outbox.filter((i) => i !== t);
    this._failReply(t.seq + 1, t.id);
  }

  /** After any change: settle, send the next queued message if nothing is in the way, tell the page. */
  _changed() {
    this._reconcile();
    const next = this._outbox.find((i) => i.status === "pending");
    if (next && this._ready && !this._resuming && !this._turn && this._awaiting == null) {
      this._turn = next;
      this._waits = 0;
      this._sendTurn();
    }
    const busy = this.busy;
    if (!this._dirty && busy === this._wasBusy) return;
    this._dirty = false;
    this._wasBusy = busy;
    this._emit("transcript", { transcript: this.transcript });
  }

  _sendTurn() {
    const t = /** @type {Outgoing} */ (this._turn);
    if (t.seq != null && this._seqs.get(t.seq + 1)?.status === "failed") this._seqs.delete(t.seq + 1); // made again
    this._send({ action: "send", chat_id: this.chatId, client_msg_id: t.id, text: t.text });
    this._armReply();
  }

  /**
   * The same send again (same client_msg_id), at most MAX_RESENDS times in a row without an ack.
   * @param {Outgoing} t
   */
  _resend(t) {
    if (++t.resends <= MAX_RESENDS) {
      this._sendTurn();
      return;
    }
    this._failTurn(t);
    this._emit("error", { code: "reply_timeout", message: "No reply came; try again.", retryable: true, client_msg_id: t.id });
  }

  _progress() {
    /** @type {Outgoing} */ (this._turn).resends = 0;
    this._armReply();
  }

  _armReply() {
    this._timer("reply", this.options.replyTimeoutMs, () => this._replyTimeout());
  }

  /**
   * Nothing came for replyTimeoutMs. An unacked send goes again (same client_msg_id). An acked
   * one is never resent blindly, since its reply may wait in the server's queue: the client asks
   * (`history` from the user message) and the answer decides (_onHistory): the reply is
   * there, or `replying` names it (wait on), or no one has it (resend). After replyMaxWaitMs of
   * such waiting without a delta, the turn fails with a retryable `reply_timeout`.
   */
  _replyTimeout() {
    const t = this._turn;
    const seq = t ? (t.seq != null ? t.seq + 1 : null) : this._awaiting;
    if (t && seq == null) this._resend(t);
    else if (seq != null && ++this._waits >= Math.ceil(this.options.replyMaxWaitMs / this.options.replyTimeoutMs)) {
      this._giveUp(t, seq);
    } else if (seq != null) {
      this._checking = seq > 0;
      this._send({ action: "history", chat_id: this.chatId, after_seq: Math.max(0, seq - 2) });
      this._armReply();
    }
    this._probe();
    this._changed();
  }

  /**
   * Waited replyMaxWaitMs for reply `seq`: fail it, retryable (retry(id) asks for it again).
   * @param {?Outgoing} t @param {number} seq
   */
  _giveUp(t, seq) {
    this._waits = 0;
    if (t) this._failTurn(t);
    else if (seq > 0) this._failReply(seq);
    else { // a refused send's wait for another reply: the queue moves on
      this._awaiting = null;
      return;
    }
    const id = this._seqs.get(seq)?.client_msg_id;
    this._emit("error", { code: "reply_timeout", message: "No reply came; try again.", retryable: true, seq, ...(id && { client_msg_id: id }) });
  }

  _lastSeq() {
    return Math.max(0, ...[...this._seqs.values()].filter((m) => m.status === "stored").map((m) => m.seq));
  }

  // -- plumbing
  /** @param {State} state @param {object} [extra] */
  _setState(state, extra) {
    if (state === this.state && !extra) return;
    this.state = state;
    this._emit("state", { state, ...extra });
  }

  /** @param {string} type @param {object} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** @param {TimerName} name @param {number} ms (outside 0 to 2^31 - 1: off) @param {() => void} fn */
  _timer(name, ms, fn) {
    this._clear(name);
    if (!(ms >= 0 && ms < 2 ** 31)) return;
    const timer = setTimeout(() => {
      this._timers.delete(name);
      fn();
    }, ms);
    this._timers.set(name, timer);
  }

  /** @param {TimerName} name */
  _clear(name) {
    clearTimeout(this._timers.get(name));
    this._timers.delete(name);
  }
}
