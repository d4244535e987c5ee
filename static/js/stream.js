// One workflow's event stream, kept open across network drops and server restarts.
//
// Reconnection is managed here rather than left to EventSource, so that the page knows
// its state at every moment and resumes from the last cursor it saw (the `lastEventId`
// query parameter) instead of starting over. Whatever arrives twice anyway (a snapshot
// after a cursor the server no longer holds) is deduplicated by the conversation model.
import { api } from './api.js';

const EVENT_TYPES = ['chatdata', 'complete', 'stopped'];
const TERMINAL = new Set(['complete', 'stopped', 'error']);
const MAX_BACKOFF_MS = 8000;

export class WorkflowStream {
  /**
   * @param {string} workflowId
   * @param {{onEvent: (type: string, data: object) => void, onState: (state: string) => void,
   *          onGone?: () => void}} handlers
   */
  constructor(workflowId, handlers) {
    this.workflowId = workflowId;
    this.handlers = handlers;
    this.cursor = null;
    this.es = null;
    this.timer = null;
    this.attempt = 0;
    this.failures = 0;
    this.closed = false;
    this.endExpected = false;
    this.state = 'connecting';
    this.lastEventAt = Date.now();
  }

  open() {
    this.closed = false;
    this.connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.dropConnection();
  }

  /** The browser went offline: stop trying until it is back. */
  suspend() {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.dropConnection();
    this.setState('offline');
  }

  /** Reconnect now (back online, or the user asked). */
  resume() {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    if (!this.es) this.connect();
  }

  get isOpen() {
    return !!this.es && this.es.readyState === EventSource.OPEN;
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.handlers.onState(state);
  }

  dropConnection() {
    if (this.es) {
      this.es.close();
      this.es = null;
    }
  }

  connect() {
    if (this.closed) return;
    this.dropConnection();
    if (!navigator.onLine) {
      this.setState('offline');
      return;
    }
    if (this.state !== 'live') this.setState(this.attempt ? 'reconnecting' : 'connecting');
    const es = new EventSource(api.streamUrl(this.workflowId, this.cursor));
    this.es = es;
    es.addEventListener('open', () => {
      if (this.es !== es) return;
      this.attempt = 0;
      this.failures = 0;
      this.setState('live');
    });
    for (const type of EVENT_TYPES) es.addEventListener(type, (event) => this.receive(es, type, event));
    es.addEventListener('error', (event) => {
      // `error` is both the server's event type and EventSource's connection failure:
      // the server's one is a MessageEvent that carries data.
      if (event instanceof MessageEvent && typeof event.data === 'string' && event.data) {
        this.receive(es, 'error', event);
      } else {
        this.connectionLost(es);
      }
    });
  }

  receive(es, type, event) {
    if (this.es !== es) return;
    if (event.lastEventId) this.cursor = event.lastEventId;
    this.lastEventAt = Date.now();
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (TERMINAL.has(type)) this.endExpected = true;
    this.handlers.onEvent(type, data && typeof data === 'object' ? data : {});
  }

  connectionLost(es) {
    if (this.es !== es) return;
    const neverOpened = es.readyState === EventSource.CLOSED && this.state !== 'live';
    this.dropConnection();
    if (this.closed) return;
    if (!navigator.onLine) {
      this.setState('offline');
      return;
    }
    if (this.endExpected) {
      // The server ends a stream after the round it was opened for; follow on at once.
      this.endExpected = false;
      this.timer = setTimeout(() => this.connect(), 30);
      return;
    }
    this.setState('reconnecting');
    if (neverOpened) this.failures += 1;
    if (this.failures >= 3 && this.handlers.onGone) {
      // Refused several times in a row: ask whether the conversation still exists.
      this.failures = 0;
      this.handlers.onGone();
    }
    const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.attempt) + Math.random() * 250;
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
