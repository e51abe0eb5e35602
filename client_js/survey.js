// @ts-check
// The chat inside a survey page (Qualtrics, LimeSurvey, any page): enter the study, mount the
// widget, report progress. ES module, no dependencies. Guide: docs/surveys.md; contract: API.md.
//
//   import { mountSurveyChat } from "https://static.example.org/client_js/survey.js";
//   mountSurveyChat(element, {
//     entry: { url: ENTRY_URL, study: "tutor-2026", participant: PROLIFIC_PID, ids: { PROLIFIC_PID, ResponseID } },
//     // or, when the survey's server entered (Qualtrics' Web Service): credentials: { url, token, ticket }, minMessages
//     onProgress: ({ chatId, messages, minMessages, done }) => { ... },
//     parentOrigin: "https://yourlab.eu.qualtrics.com",  // inside an iframe: progress also goes to the parent
//   });
//
// Link entry posts a form (a CORS simple request: no preflight) and reads the three opaque
// strings; a refusal shows a text from SURVEY_LABELS.refused by its code, never a stack trace.
// What may pass is tried again, with exponential backoff and full jitter, a few times: API
// Gateway's 429 (its stage throttling, which a page sees as a network error: the answer has no
// CORS header), a 5xx, the network. A retry cannot assign a second arm: the service keeps one
// assignment per participant, and an entry whose answer was lost is answered the same again.
// Entering again (a refresh, a second tab) gets the same arm and chat back from the service.
// Progress counts the participant's messages the service stored: the `chat` frame's
// limits.user_messages, plus the messages acked since.

import { backoffDelay } from "./chat-client.js";
import { mountChat } from "./chat-widget.js";

/**
 * @typedef {import("./chat-client.js").ChatClient} ChatClient
 * @typedef {import("./chat-widget.js").GivenLabels} WidgetLabels
 * @typedef {{url: string, token: string, ticket: string}} Credentials what the entry answers
 * @typedef {{url: string, study: string, participant: string, ids?: Record<string, string>}} LinkEntry
 *   url: the entry endpoint's base (EntryUrl, without /studies/...); ids: platform ids to record (ResponseID, ...)
 * @typedef {{chatId: ?string, messages: number, minMessages: number, done: boolean}} Progress
 * @typedef {{type: "llm-chat:progress"} & Progress} ProgressMessage what a parent frame receives
 * @typedef {object} SurveyOptions
 * @property {Credentials} [credentials] server entry: the strings the survey's server received
 * @property {LinkEntry} [entry] link entry: the page enters itself
 * @property {number} [minMessages] server entry: the study's min_messages (link entry reads it from the answer); default 1
 * @property {(progress: Progress) => void} [onProgress] on the first chat frame and every change
 * @property {(code: string) => void} [onRefused] the entry was refused (its code), or could not be made ("entry_failed")
 * @property {string} [parentOrigin] inside an iframe: post progress to the parent, to this origin only
 * @property {Partial<SurveyLabels>} [labels] texts of SURVEY_LABELS (refused merges per code) and of the widget's
 * @property {boolean} [stylesheet] add chat-widget.css (beside this module) to the page unless there; default true
 * @property {number} [entryAttempts] tries of a link entry met by throttling (429, `throttled`), a 5xx or the
 *   network; default 6 (about 8 s of waiting in all on average, 15.5 s at most)
 * @property {number} [entryBackoffMs] the first retry's longest delay, doubled each time (full jitter); default 500
 * @property {number} [entryBackoffMaxMs] the longest delay of any retry; default 8000
 * @property {typeof fetch} [fetch]
 * @typedef {typeof SURVEY_LABELS & {widget?: WidgetLabels}} SurveyLabels
 */

export const PROGRESS_MESSAGE = "llm-chat:progress";

export const SURVEY_LABELS = Object.freeze({
  entering: "Opening the chat…",
  /** while a link entry waits to try again (throttled, a server error, the network) */
  retrying: "Still trying to open the chat…",
  /** an entry that failed for a reason the page cannot tell (network, an origin not allowed, ...) */
  failed: "The chat could not be opened. Please reload the page; if this happens again, contact the researchers.",
  /** by the entry endpoint's error code (docs/surveys.md) */
  refused: Object.freeze({
    study_full: "This study is full: no more participants can take part in the chat. Thank you for your interest.",
    paused: "The chat is paused at the moment. Please try again later.",
    participant_not_allowed: "Your participant ID is not on the list of this study. Please open the study from the link you were given.",
    participant_invalid: "Your participant ID is missing or could not be read. Please open the study from the link you were given.",
    throttled: "Many participants are starting at once. Please wait a moment and reload the page.",
  }),
});

const ENTRY_DEFAULTS = Object.freeze({ entryAttempts: 6, entryBackoffMs: 500, entryBackoffMaxMs: 8000 });

/**
 * Mount the chat for a survey's participant.
 * @param {HTMLElement} container
 * @param {SurveyOptions} options
 * @returns {{ready: Promise<?ChatClient>, progress: () => Progress, destroy: () => void}}
 *   ready: the client once the chat is open; null if the entry was refused or the chat could not start
 */
export function mountSurveyChat(container, options) {
  if (!container || typeof container.appendChild !== "function") {
    throw new TypeError("mountSurveyChat: the first argument must be a DOM element");
  }
  if (!options || Boolean(options.credentials) === Boolean(options.entry)) {
    throw new TypeError("mountSurveyChat: give either `credentials` (server entry) or `entry` (link entry)");
  }
  const survey = new SurveyChat(container, options);
  return { ready: survey.ready, progress: () => survey.progress(), destroy: () => survey.destroy() };
}

class SurveyChat {
  /** @param {HTMLElement} container @param {SurveyOptions} options */
  constructor(container, options) {
    this.options = options;
    this.labels = {
      ...SURVEY_LABELS, ...options.labels,
      refused: { ...SURVEY_LABELS.refused, ...options.labels?.refused },
    };
    if (options.stylesheet !== false) addStylesheet();
    this.root = document.createElement("div");
    this.root.className = "lc-survey";
    this.notice = document.createElement("p");
    this.notice.className = "lc-survey-notice";
    this.notice.setAttribute("role", "status");
    this.root.appendChild(this.notice);
    container.appendChild(this.root);
    this.minMessages = options.minMessages ?? 1;
    /** @type {?ReturnType<typeof mountChat>} */
    this.widget = null;
    this.destroyed = false;
    // the count: the chat frame's user_messages, plus user seqs stored after that frame's history
    this.counted = 0;
    this.countedUpTo = 0;
    /** @type {Set<number>} */
    this.newSeqs = new Set();
    this.lastReport = "";
    this.ready = this.start();
  }

  /** @returns {Promise<?ChatClient>} */
  async start() {
    const credentials = this.options.credentials || (await this.enter());
    if (!credentials || this.destroyed) return null;
    this.notice.textContent = "";
    this.notice.hidden = true;
    const box = this.root.appendChild(document.createElement("div"));
    this.widget = mountChat(box, { ...credentials, labels: this.labels.widget });
    const client = this.widget.client;
    client.addEventListener("chat", () => this.onChat(client));
    client.addEventListener("transcript", () => this.count(client));
    client.addEventListener("ack", (event) => this.stored(/** @type {CustomEvent} */ (event).detail.seq));
    return this.widget.ready;
  }

  /** Link entry: the three strings (and min_messages) from the endpoint, or null after a refusal shown. */
  async enter() {
    const entry = /** @type {LinkEntry} */ (this.options.entry);
    const o = { ...ENTRY_DEFAULTS, ...this.options };
    this.notice.textContent = this.labels.entering;
    const attempts = Math.max(1, o.entryAttempts);
    let code = "entry_failed";
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) {
        this.notice.textContent = this.labels.retrying;
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt - 1, o.entryBackoffMs, o.entryBackoffMaxMs)));
      }
      if (this.destroyed) return null;
      const answer = await postEntry(entry, this.options.fetch || fetch);
      if ("url" in answer) {
        if (typeof answer.min_messages === "number") this.minMessages = answer.min_messages;
        return { url: answer.url, token: answer.token, ticket: answer.ticket };
      }
      code = answer.error;
      if (!answer.retry) break;
    }
    if (this.destroyed) return null;
    const known = /** @type {Record<string, string>} */ (this.labels.refused)[code];
    this.notice.textContent = known || this.labels.failed;
    this.notice.setAttribute("role", "alert");
    this.notice.dataset.code = code;
    this.options.onRefused?.(code);
    return null;
  }

  /** @param {ChatClient} client */
  onChat(client) {
    this.counted = client.limits?.user_messages ?? 0;
    this.countedUpTo = Math.max(0, ...client.transcript.map((e) => e.seq ?? 0));
    this.newSeqs.clear();
    this.count(client);
  }

  /** @param {ChatClient} client */
  count(client) {
    for (const e of client.transcript) {
      if (e.role === "user" && e.seq != null && e.status === "stored") this.stored(e.seq, false);
    }
    this.report();
  }

  /** A participant message the service stored. @param {number} seq @param {boolean} [report] */
  stored(seq, report = true) {
    if (seq > this.countedUpTo) this.newSeqs.add(seq);
    if (report) this.report();
  }

  /** @returns {Progress} */
  progress() {
    const client = this.widget?.client;
    const messages = this.counted + this.newSeqs.size;
    return { chatId: client?.chatId ?? null, messages, minMessages: this.minMessages, done: messages >= this.minMessages };
  }

  report() {
    if (!this.widget?.client.chatId || this.destroyed) return;
    const progress = this.progress();
    const key = JSON.stringify(progress);
    if (key === this.lastReport) return;
    this.lastReport = key;
    this.options.onProgress?.(progress);
    const parentOrigin = this.options.parentOrigin;
    if (parentOrigin && typeof window !== "undefined" && window.parent !== window) {
      /** @type {ProgressMessage} */
      const message = { type: PROGRESS_MESSAGE, ...progress };
      window.parent.postMessage(message, parentOrigin);
    }
  }

  destroy() {
    this.destroyed = true;
    this.widget?.destroy();
    this.root.remove();
  }
}

/**
 * POST {url}/studies/{study}/entry as a form (a CORS simple request).
 * `retry`: what may pass if tried again: API Gateway's 429 (code `throttled`), a 5xx (the function's
 * own `throttled` 503, or API Gateway's 500/502/503/504), an answer that could not be read (the
 * network, or an answer without CORS headers: API Gateway's own). A refusal with a code is final.
 * @param {LinkEntry} entry @param {typeof fetch} fetcher
 * @returns {Promise<(Credentials & {min_messages?: number}) | {error: string, retry: boolean}>}
 */
async function postEntry(entry, fetcher) {
  const body = new URLSearchParams({ ...entry.ids, participant: entry.participant });
  const url = `${entry.url.replace(/\/+$/, "")}/studies/${encodeURIComponent(entry.study)}/entry`;
  let response;
  try {
    response = await fetcher(url, { method: "POST", body, credentials: "omit", cache: "no-store" });
  } catch { // the network, or an answer this page may not read (CORS): nothing more to tell
    return { error: "entry_failed", retry: true };
  }
  const answer = await response.json().catch(() => null);
  if (response.ok && typeof answer?.url === "string" && typeof answer.token === "string" && typeof answer.ticket === "string") {
    return answer;
  }
  const code = typeof answer?.error === "string" ? answer.error : response.status === 429 ? "throttled" : "entry_failed";
  return { error: code, retry: code === "throttled" || response.status === 429 || response.status >= 500 };
}

/** chat-widget.css from beside this module, once per page. */
function addStylesheet() {
  const href = new URL("chat-widget.css", import.meta.url).href;
  if ([...document.querySelectorAll("link[rel=stylesheet]")].some((l) => /** @type {HTMLLinkElement} */ (l).href === href)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  document.head.appendChild(link);
}
