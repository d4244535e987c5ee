// The conversation on screen: items merged by id (never shown twice), deltas merged by
// (messageId, index), grouped by round: the prompt, the reply, its steps, its error.
import { setMarkdown, plainText } from './markdown.js';

const RENDER_INTERVAL_MS = 32;

const roundOf = (...candidates) => {
  for (const value of candidates) {
    const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
    if (typeof n === 'number' && Number.isFinite(n)) return n;
  }
  return null;
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class ConversationView {
  /**
   * @param {HTMLElement} root the <ol> that holds the rounds
   * @param {{announce: (text: string) => void, onRetry: (prompt: string, round: number) => void,
   *          onChange: () => void, onLiveRound: (round: number) => void}} hooks
   */
  constructor(root, hooks) {
    this.root = root;
    this.hooks = hooks;
    this.reset(null);
  }

  reset(workflowId) {
    this.workflowId = workflowId;
    this.messages = new Map(); // id -> message record
    this.logs = new Map(); // id -> {item, li}
    this.rounds = new Map(); // number -> round record
    this.terminated = new Map(); // round number -> 'complete' | 'stopped' | 'error'
    this.maxRound = 0;
    this.pending = null;
    this.running = false;
    this.root.replaceChildren();
  }

  get isEmpty() {
    return this.messages.size === 0 && !this.pending && this.rounds.size === 0;
  }

  get latestRound() {
    return this.maxRound;
  }

  /** The last prompt the user sent (for Retry), or of a given round. */
  userPrompt(round) {
    const rounds = round != null ? [round] : [...this.rounds.keys()].sort((a, b) => b - a);
    for (const n of rounds) {
      const r = this.rounds.get(n);
      if (!r) continue;
      for (const id of r.userIds) {
        const m = this.messages.get(id);
        if (m) return m.content;
      }
    }
    return null;
  }

  firstUserText() {
    const first = [...this.rounds.keys()].sort((a, b) => a - b)[0];
    return first != null ? this.userPrompt(first) : this.pending?.prompt ?? null;
  }

  // ---- rounds -------------------------------------------------------------------------

  round(number) {
    let r = this.rounds.get(number);
    if (r) return r;
    const li = el('li', 'round');
    li.dataset.round = String(number);
    r = {
      number,
      li,
      user: el('div', 'slot-user'),
      assistant: el('div', 'slot-assistant'),
      typing: null,
      steps: null,
      stepsList: null,
      stepsSummary: null,
      error: el('div', 'slot-error'),
      userIds: [],
      assistantIds: [],
    };
    li.append(r.user, r.assistant, r.error);
    this.rounds.set(number, r);
    // Keep rounds in order, the optimistic one last.
    const after = [...this.rounds.values()].filter((o) => o.number > number).sort((a, b) => a.number - b.number)[0];
    if (after) this.root.insertBefore(li, after.li);
    else if (this.pending) this.root.insertBefore(li, this.pending.li);
    else this.root.append(li);
    if (number > this.maxRound) {
      // Only the latest round's error offers Retry: a later round went on from it.
      if (this.maxRound) this.retired(this.maxRound);
      this.maxRound = number;
    }
    return r;
  }

  // ---- the optimistic prompt ---------------------------------------------------------

  addPending(prompt) {
    this.removePending();
    const li = el('li', 'round round-pending');
    const article = this.messageElement('user');
    setMarkdown(article.body, prompt, { role: 'user' });
    const typing = this.typingElement();
    li.append(article.node, typing);
    this.root.append(li);
    this.pending = { prompt, li, messageId: null };
    this.hooks.onChange();
  }

  /** Whether this round's end event has arrived. */
  hasEnded(roundNumber) {
    return this.terminated.has(Number(roundNumber));
  }

  /** Whether the round of this message has already ended. */
  endedWith(messageId) {
    const m = messageId == null ? null : this.messages.get(String(messageId));
    return !!m && this.hasEnded(m.round);
  }

  setPendingMessageId(id) {
    if (this.pending && id) this.pending.messageId = id;
  }

  removePending() {
    if (!this.pending) return;
    this.pending.li.remove();
    this.pending = null;
    this.hooks.onChange();
  }

  adoptPending(item) {
    if (!this.pending) return;
    if (item.id === this.pending.messageId || item.content === this.pending.prompt) {
      this.pending.li.remove();
      this.pending = null;
    }
  }

  // ---- items --------------------------------------------------------------------------

  loadHistory(entries) {
    for (const entry of entries) this.apply(entry, { history: true });
  }

  /** One chatdata (from the history or the stream): {type, createdAt, item, roundNumber?}. */
  apply(data, { history = false } = {}) {
    if (!data || typeof data !== 'object' || !data.item || typeof data.item !== 'object') return;
    if (data.type === 'message') this.applyMessage(data.item, data, history);
    else if (data.type === 'delta') this.applyDelta(data.item, data);
    else if (data.type === 'log') this.applyLog(data.item, data);
    this.hooks.onChange();
  }

  messageElement(role) {
    const node = el('article', `msg msg-${role}`);
    node.setAttribute('aria-label', role === 'user' ? 'You said' : 'Assistant said');
    const body = el('div', 'md');
    if (role === 'assistant') {
      const avatar = el('div', 'avatar');
      avatar.setAttribute('aria-hidden', 'true');
      const column = el('div', 'msg-column');
      const meta = el('div', 'msg-meta');
      column.append(body, meta);
      node.append(avatar, column);
      return { node, body, meta };
    }
    const bubble = el('div', 'bubble');
    bubble.append(body);
    node.append(bubble);
    return { node, body, meta: null };
  }

  createMessage(id, role, roundNumber) {
    const r = this.round(roundNumber);
    const parts = this.messageElement(role === 'user' ? 'user' : 'assistant');
    parts.node.dataset.messageId = id;
    const m = { id, role, round: roundNumber, final: false, content: '', parts: [], node: parts.node, body: parts.body, meta: parts.meta, renderTimer: null, lastRender: 0, streamed: false };
    if (role === 'user') {
      r.user.append(parts.node);
      r.userIds.push(id);
    } else {
      r.assistant.append(parts.node);
      r.assistantIds.push(id);
    }
    this.messages.set(id, m);
    this.updateTyping();
    return m;
  }

  applyMessage(item, data, history) {
    const id = item.id;
    if (id == null) return;
    const content = typeof item.content === 'string' ? item.content : '';
    const existing = this.messages.get(id);
    if (existing && existing.final && existing.content === content) return;
    const role = item.role === 'user' ? 'user' : 'assistant';
    if (role === 'user') this.adoptPending(item);
    const isNewRound = (n) => n != null && n > this.maxRound && !this.terminated.has(n);
    let roundNumber = existing ? existing.round : roundOf(item.roundNumber, data.roundNumber);
    if (roundNumber == null) roundNumber = role === 'user' ? this.maxRound + 1 : Math.max(this.maxRound, 1);
    const liveRound = !history && role === 'user' && isNewRound(roundNumber);
    const m = existing || this.createMessage(String(id), role, roundNumber);
    const wasStreaming = !m.final && m.streamed;
    m.final = true;
    m.content = content;
    m.parts = null;
    m.node.classList.add('is-final');
    m.node.classList.remove('incomplete');
    m.meta?.querySelector('.badge-incomplete')?.remove();
    this.render(m, true);
    this.updateTyping();
    if (liveRound) this.hooks.onLiveRound(roundNumber);
    if (role === 'assistant' && !history && (wasStreaming || this.running)) {
      this.hooks.announce(`Assistant: ${plainText(content).slice(0, 400)}`);
    }
  }

  applyDelta(item, data) {
    const messageId = item.messageId;
    const index = roundOf(item.index);
    if (messageId == null || index == null || index < 0) return;
    let m = this.messages.get(String(messageId));
    if (m && m.final) return; // the whole text is already here
    if (!m) {
      const roundNumber = roundOf(data.roundNumber, item.roundNumber) ?? Math.max(this.maxRound, 1);
      m = this.createMessage(String(messageId), 'assistant', roundNumber);
      if (this.pending && roundNumber >= this.maxRound) this.removePending();
    }
    if (m.parts[index] !== undefined) return; // seen already
    m.parts[index] = typeof item.text === 'string' ? item.text : String(item.text ?? '');
    m.content = m.parts.join('');
    m.streamed = true;
    m.node.classList.add('streaming');
    this.render(m, false);
    if (!this.terminated.has(m.round)) this.hooks.onLiveRound(m.round, true);
  }

  applyLog(item, data) {
    const id = item.id;
    if (id == null) return;
    const key = String(id);
    const existing = this.logs.get(key);
    if (existing && existing.item.status === item.status && existing.item.message === item.message) return;
    const roundNumber = existing ? existing.round : (roundOf(item.roundNumber, data.roundNumber) ?? Math.max(this.maxRound, 1));
    const r = this.round(roundNumber);
    if (!r.steps) {
      r.steps = el('details', 'steps');
      r.stepsSummary = el('summary', 'steps-summary');
      r.stepsList = el('ol', 'steps-list');
      r.steps.append(r.stepsSummary, r.stepsList);
      r.li.insertBefore(r.steps, r.error);
    }
    let li = existing?.li;
    if (!li) {
      li = el('li', 'step');
      li.append(el('span', 'step-dot'), el('span', 'step-text'), el('span', 'step-status'));
      r.stepsList.append(li);
    }
    const status = String(item.status ?? '');
    li.dataset.status = status.toLowerCase();
    li.querySelector('.step-text').textContent = String(item.message ?? item.type ?? 'step');
    li.querySelector('.step-status').textContent = status;
    if (item.type) li.title = String(item.type);
    this.logs.set(key, { item, li, round: roundNumber });
    this.updateStepsSummary(r);
    // How a failed or stopped round ended is stored among its steps: after a reload it is
    // all that tells of a round before the latest (live, its end event follows).
    const outcome = { error: 'error', stopped: 'stopped' }[item.type];
    if (outcome && !this.terminated.has(roundNumber)) this.terminate(outcome, { roundNumber, message: item.message });
  }

  updateStepsSummary(r) {
    if (!r.steps) return;
    const items = [...r.stepsList.children];
    const last = items[items.length - 1];
    const lastText = last ? last.querySelector('.step-text').textContent : '';
    const count = `${items.length} ${items.length === 1 ? 'step' : 'steps'}`;
    r.stepsSummary.replaceChildren(el('span', 'steps-count', count), el('span', 'steps-last', lastText));
    const failed = items.some((li) => /^(error|failed|failure)$/.test(li.dataset.status));
    r.steps.classList.toggle('has-error', failed);
  }

  render(m, now) {
    clearTimeout(m.renderTimer);
    m.renderTimer = null;
    const since = performance.now() - m.lastRender;
    if (!now && since < RENDER_INTERVAL_MS) {
      m.renderTimer = setTimeout(() => this.render(m, true), RENDER_INTERVAL_MS - since);
      return;
    }
    m.lastRender = performance.now();
    setMarkdown(m.body, m.content, { role: m.role });
    if (m.final) m.node.classList.remove('streaming');
    this.hooks.onChange();
  }

  // ---- round ends ----------------------------------------------------------------------

  terminate(kind, data) {
    const roundNumber = roundOf(data.roundNumber) ?? this.maxRound;
    if (roundNumber == null) return;
    const again = this.terminated.get(roundNumber) === kind; // its stored outcome came first
    this.terminated.set(roundNumber, kind);
    const r = this.rounds.get(roundNumber);
    if (r) {
      for (const id of r.assistantIds) {
        const m = this.messages.get(id);
        if (!m) continue;
        if (m.renderTimer) this.render(m, true);
        m.node.classList.remove('streaming');
        if (!m.final && kind !== 'complete') {
          // Text that was streamed but never stored (the worker died): shown, but marked.
          m.node.classList.add('incomplete');
          if (m.meta && !m.meta.querySelector('.badge-incomplete')) m.meta.append(el('span', 'badge badge-incomplete', 'Incomplete'));
        }
      }
    }
    if (kind === 'stopped') this.markStopped(roundNumber);
    if (kind === 'error') this.showError(roundNumber, data.message || 'Something went wrong while writing the reply.', data.code, !again);
    this.updateTyping();
    this.hooks.onChange();
  }

  markStopped(roundNumber) {
    const r = this.round(roundNumber);
    r.li.classList.add('is-stopped');
    const last = this.messages.get(r.assistantIds[r.assistantIds.length - 1]);
    const target = last?.meta || r.error;
    if (!target.querySelector('.badge-stopped')) target.append(el('span', 'badge badge-stopped', 'Stopped'));
  }

  showError(roundNumber, message, code, announce = true) {
    const r = this.round(roundNumber);
    r.li.classList.add('has-error');
    const box = el('div', 'error-box');
    box.setAttribute('role', 'group');
    box.setAttribute('aria-label', 'Error');
    const icon = el('span', 'error-icon', '!');
    icon.setAttribute('aria-hidden', 'true');
    const text = el('p', 'error-text', message);
    if (code) text.title = String(code);
    const retry = el('button', 'retry-btn', 'Retry');
    retry.type = 'button';
    retry.addEventListener('click', () => {
      const prompt = this.userPrompt(roundNumber) ?? this.userPrompt();
      if (prompt != null) this.hooks.onRetry(prompt, roundNumber);
    });
    if (this.userPrompt(roundNumber) == null && this.userPrompt() == null) retry.hidden = true;
    box.append(icon, text);
    if (roundNumber >= this.maxRound) box.append(retry);
    r.error.replaceChildren(box);
    if (announce) this.hooks.announce(`Error: ${message}`);
  }

  /** The round was retried: its error stays as history but offers no second retry. */
  retired(roundNumber) {
    const r = this.rounds.get(roundNumber);
    const button = r?.error.querySelector('.retry-btn');
    if (button) button.remove();
  }

  hasError(roundNumber) {
    return !!this.rounds.get(roundNumber)?.error.firstChild;
  }

  // ---- running indicator -------------------------------------------------------------

  typingElement() {
    const typing = el('div', 'typing');
    typing.setAttribute('aria-label', 'Assistant is writing');
    typing.setAttribute('role', 'img');
    for (let i = 0; i < 3; i += 1) typing.append(el('span'));
    return typing;
  }

  setRunning(running) {
    this.running = running;
    this.updateTyping();
  }

  updateTyping() {
    for (const r of this.rounds.values()) {
      const hasText = r.assistantIds.length > 0;
      const show = this.running && r.number === this.maxRound && !hasText && !this.pending && !r.error.firstChild;
      if (show && !r.typing) {
        r.typing = this.typingElement();
        r.assistant.append(r.typing);
      } else if (!show && r.typing) {
        r.typing.remove();
        r.typing = null;
      }
    }
  }
}
