// @ts-check
// A reading pace for replies: how much of each reply the widget shows, word by word.
//
// A bot may set a pace (the `chat` frame's `pace`, docs/protocol.md): a reply then appears at
// `words_per_minute`, each word's wait scaled by a random factor in [1 - jitter, 1 + jitter],
// however fast the model streams. Only what is drawn waits: the client has stored the whole
// text, and the service too. No DOM, no timers: the widget asks what to show and when to ask
// again, so tests drive it with their own clock.

/**
 * @typedef {{words_per_minute: number, jitter?: number}} Pace the `chat` frame's `pace`
 * @typedef {{shown: number, length: number, dueAt: number, caughtUp: boolean}} Progress
 */

// the next word: spaces, then everything up to the next space
const WORD = /\s*\S+/y;

export class Pacer {
  /**
   * @param {Pace} pace
   * @param {{now?: () => number, random?: () => number}} [clock] milliseconds and [0, 1), for tests
   */
  constructor(pace, { now = () => Date.now(), random = Math.random } = {}) {
    /** @private */ this._wordMs = 60000 / pace.words_per_minute;
    /** @private */ this._jitter = Math.min(Math.max(Number(pace.jitter) || 0, 0), 0.9);
    /** @private */ this._now = now;
    /** @private */ this._random = random;
    /** @private @type {Map<string, Progress>} a reply's key -> how much of it is shown */
    this._replies = new Map();
  }

  /**
   * The part of reply `key` (whose text so far is `text`) to show now. Its first word shows
   * at once; each next word when its wait is over. A stream slower than the pace is shown as
   * it comes: the next word after a stall waits from when it arrived, not from the last word.
   * @param {string} key @param {string} text @returns {string}
   */
  visible(key, text) {
    const now = this._now();
    let at = this._replies.get(key);
    if (!at) {
      at = { shown: 0, length: 0, dueAt: now, caughtUp: false };
      this._replies.set(key, at);
    }
    at.length = text.length;
    if (at.caughtUp && at.shown < text.length) {
      at.dueAt = Math.max(at.dueAt, now);
      at.caughtUp = false;
    }
    while (at.shown < text.length && now >= at.dueAt) {
      WORD.lastIndex = at.shown;
      at.shown = WORD.test(text) ? WORD.lastIndex : text.length;
      at.dueAt += this._delay();
    }
    if (!/\S/.test(text.slice(at.shown))) at.shown = text.length; // only spaces left: nothing to wait for
    at.caughtUp = at.shown >= text.length;
    return text.slice(0, at.shown);
  }

  /** Whether a reply has more text than is shown. @returns {boolean} */
  pending() {
    for (const at of this._replies.values()) if (at.shown < at.length) return true;
    return false;
  }

  /** Milliseconds until the next word is due, or null when nothing waits. @returns {?number} */
  nextInMs() {
    let soonest = null;
    for (const at of this._replies.values()) {
      if (at.shown < at.length && (soonest === null || at.dueAt < soonest)) soonest = at.dueAt;
    }
    return soonest === null ? null : Math.max(0, soonest - this._now());
  }

  /** @private @returns {number} one word's wait */
  _delay() {
    return this._wordMs * (1 + this._jitter * (2 * this._random() - 1));
  }
}
