// The bundled chat page: conversation list, history, live stream, composer.
// Talks to the server only through the contract in shared/API.md.
import { api, normalizeChatdata } from './js/api.js';
import { ConversationView } from './js/conversation.js';
import { WorkflowStream } from './js/stream.js';
import { Sidebar, titleOf } from './js/sidebar.js';

const $ = (id) => document.getElementById(id);
const els = {
  app: $('app'),
  sidebar: $('sidebar'),
  scrim: $('scrim'),
  openSidebar: $('open-sidebar'),
  closeSidebar: $('close-sidebar'),
  newChat: $('new-chat'),
  conversations: $('conversations'),
  convEmpty: $('conv-empty'),
  title: $('conv-title'),
  conn: $('conn'),
  connLabel: $('conn-label'),
  thread: $('thread'),
  rounds: $('rounds'),
  emptyState: $('empty-state'),
  notice: $('notice'),
  jump: $('jump'),
  composer: $('composer'),
  prompt: $('prompt'),
  send: $('send'),
  stop: $('stop'),
  composerError: $('composer-error'),
  announcer: $('announcer'),
};

const CONN_LABELS = {
  idle: 'Online',
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};
const WATCHDOG_MS = 2500;
const QUIET_MS = 5000;
const ELSEWHERE_FIRST_MS = 2000; // re-reading the list while another conversation replies
const ELSEWHERE_MAX_MS = 30000;
const narrow = window.matchMedia('(max-width: 800px)');

const state = {
  workflowId: null,
  stream: null,
  running: false,
  sending: false,
  stopping: false,
  selectSeq: 0,
  stickToBottom: true,
  listTimer: null,
  elsewhereDelay: ELSEWHERE_FIRST_MS,
  lastStatusCheck: 0,
};

// ---- announcements, notices, errors ------------------------------------------------

let announceTimer = null;
function announce(text) {
  clearTimeout(announceTimer);
  els.announcer.textContent = '';
  // A fresh text node after a tick, so screen readers announce repeats too.
  announceTimer = setTimeout(() => { els.announcer.textContent = text; }, 50);
}

function showNotice(text) {
  els.notice.textContent = text;
  els.notice.hidden = !text;
}

function showComposerError(text) {
  els.composerError.textContent = text || '';
  els.composerError.hidden = !text;
}

// ---- the conversation view ---------------------------------------------------------

const view = new ConversationView(els.rounds, {
  announce,
  onRetry: (prompt, round) => retry(prompt, round),
  onChange: () => afterContentChange(),
  onLiveRound: () => setRunning(true),
});

const sidebar = new Sidebar(els.conversations, els.convEmpty, (id) => {
  closeSidebar();
  if (id !== state.workflowId) select(id, { history: 'push' });
  else if (!narrow.matches) els.prompt.focus();
});

function afterContentChange() {
  els.emptyState.hidden = !(view.isEmpty && !state.workflowId);
  if (state.stickToBottom) scrollToBottom();
  else els.jump.hidden = false;
  updateTitle();
}

function scrollToBottom() {
  els.thread.scrollTop = els.thread.scrollHeight;
  els.jump.hidden = true;
}

els.thread.addEventListener('scroll', () => {
  const gap = els.thread.scrollHeight - els.thread.scrollTop - els.thread.clientHeight;
  state.stickToBottom = gap < 80;
  if (state.stickToBottom) els.jump.hidden = true;
}, { passive: true });

els.jump.addEventListener('click', () => {
  state.stickToBottom = true;
  scrollToBottom();
  els.prompt.focus();
});

function updateTitle() {
  const workflow = state.workflowId ? sidebar.get(state.workflowId) : null;
  let title = 'New chat';
  if (workflow && workflow.title) title = titleOf(workflow);
  else if (state.workflowId || view.pending) {
    const first = view.firstUserText();
    title = first ? first.replace(/\s+/g, ' ').trim().slice(0, 80) : 'Conversation';
  }
  if (els.title.textContent !== title) els.title.textContent = title;
  document.title = title === 'New chat' ? 'Chat' : `${title} · Chat`;
}

// ---- running state: Send or Stop ----------------------------------------------------

function setRunning(running) {
  if (state.running === running) return;
  state.running = running;
  if (!running) state.stopping = false;
  view.setRunning(running);
  updateButtons();
  if (running && state.workflowId) sidebar.setStatus(state.workflowId, 'running');
}

function updateButtons() {
  const showStop = state.running;
  const hadFocus = document.activeElement === els.send || document.activeElement === els.stop;
  els.stop.hidden = !showStop;
  els.send.hidden = showStop;
  els.stop.setAttribute('aria-disabled', String(state.stopping));
  els.stop.classList.toggle('is-busy', state.stopping);
  const blank = !els.prompt.value.trim();
  els.send.setAttribute('aria-disabled', String(blank || state.sending));
  els.composer.classList.toggle('is-running', showStop);
  if (hadFocus) (showStop ? els.stop : els.send).focus();
}

// ---- connection state -----------------------------------------------------------------

function setConnState(connState) {
  let shown = connState;
  if (!navigator.onLine) shown = 'offline';
  else if (!state.stream && connState !== 'offline') shown = 'idle';
  els.conn.dataset.state = shown;
  els.connLabel.textContent = CONN_LABELS[shown] || shown;
}

window.addEventListener('offline', () => {
  state.stream?.suspend();
  setConnState('offline');
});
window.addEventListener('online', () => {
  setConnState(state.stream ? 'connecting' : 'idle');
  state.stream?.resume();
  refreshList();
});

// ---- the stream ---------------------------------------------------------------------

function openStream(workflowId) {
  closeStream();
  const stream = new WorkflowStream(workflowId, {
    onEvent: (type, data) => {
      if (state.stream !== stream) return;
      onStreamEvent(type, data);
    },
    onState: (connState) => {
      if (state.stream !== stream) return;
      setConnState(connState);
      if (connState === 'live') {
        showNotice('');
        // A round that ended before this stream opened sends no end event (a new
        // subscriber gets stored items only): ask for the status once it is open.
        if (state.running) {
          setTimeout(() => {
            if (state.stream === stream && state.running && !state.sending) refreshStatus(workflowId);
          }, 700);
        }
      }
    },
    onGone: () => checkGone(workflowId),
  });
  state.stream = stream;
  stream.open();
  setConnState(stream.state);
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
  setConnState('idle');
}

function onStreamEvent(type, data) {
  if (type === 'chatdata') {
    const entry = normalizeChatdata(data);
    if (entry) view.apply({ ...entry, roundNumber: data.roundNumber ?? entry.roundNumber });
    return;
  }
  if (type === 'complete' || type === 'stopped' || type === 'error') {
    const ended = data.roundNumber == null || Number(data.roundNumber) >= view.latestRound;
    view.terminate(type, data);
    if (ended) {
      setRunning(false);
      if (type === 'stopped') announce('The reply was stopped.');
    }
    const status = { complete: 'completed', stopped: 'stopped', error: 'failed' }[type];
    if (state.workflowId) sidebar.setStatus(state.workflowId, status);
    scheduleListRefresh(400);
  }
}

async function checkGone(workflowId) {
  try {
    await api.getWorkflow(workflowId);
  } catch (error) {
    if (error.status === 404 && state.workflowId === workflowId) {
      closeStream();
      setRunning(false);
      showNotice('This conversation does not exist (or is not yours).');
    }
  }
}

// A safety net: if a round seems to run but nothing arrives, ask the server how it is.
setInterval(() => {
  const stream = state.stream;
  if (!state.running || !stream || state.sending || !state.workflowId) return;
  const now = Date.now();
  if (now - stream.lastEventAt < QUIET_MS || now - state.lastStatusCheck < QUIET_MS) return;
  state.lastStatusCheck = now;
  refreshStatus(state.workflowId);
}, WATCHDOG_MS);

async function refreshStatus(workflowId) {
  let data;
  try {
    data = await api.getWorkflow(workflowId);
  } catch {
    return;
  }
  if (state.workflowId !== workflowId) return;
  for (const entry of data.items || []) {
    const normalized = normalizeChatdata(entry);
    if (normalized) view.apply(normalized, { history: true });
  }
  applyStatus(data.workflow?.status, data.workflow);
}

function applyStatus(status, workflow = null) {
  if (status === 'running') {
    // A status asked for before this round's end event came, answered after it.
    if (workflow && view.hasEnded(workflow.roundNumber)) return;
    setRunning(true);
    return;
  }
  setRunning(false);
  const round = view.latestRound;
  if (!round) return;
  if (status === 'failed' && !view.hasError(round)) {
    // The server may say why (an optional `error` on the workflow); else a plain message.
    const error = workflow && typeof workflow.error === 'object' && workflow.error ? workflow.error : {};
    const message = typeof error.message === 'string' && error.message ? error.message : 'The reply could not be completed.';
    view.terminate('error', { roundNumber: round, message, code: error.code });
  } else if (status === 'stopped' && !view.terminated.has(round)) {
    view.terminate('stopped', { roundNumber: round });
  }
  if (state.workflowId) sidebar.setStatus(state.workflowId, status);
}

// ---- conversations --------------------------------------------------------------------

function idFromUrl() {
  return new URLSearchParams(location.search).get('c') || null;
}

function setUrl(workflowId, mode) {
  if (mode === 'none') return;
  const url = workflowId ? `/?c=${encodeURIComponent(workflowId)}` : '/';
  if (url === location.pathname + location.search) return;
  const fn = mode === 'push' ? history.pushState : history.replaceState;
  fn.call(history, { c: workflowId }, '', url);
}

async function refreshList() {
  try {
    const data = await api.listWorkflows();
    const workflows = data?.workflows || [];
    sidebar.set(workflows);
    sidebar.select(state.workflowId);
    updateTitle();
    watchRepliesElsewhere(workflows);
    return true;
  } catch {
    return false;
  }
}

/** The open conversation's events refresh the list; a conversation replying while another
 *  is open has no stream here, so the list is read again until it ends (less and less often:
 *  a round whose worker died stays "replying" until something asks about it). */
function watchRepliesElsewhere(workflows) {
  if (!workflows.some((w) => w.status === 'running' && String(w.id) !== String(state.workflowId))) {
    state.elsewhereDelay = ELSEWHERE_FIRST_MS;
    return;
  }
  scheduleListRefresh(state.elsewhereDelay);
  state.elsewhereDelay = Math.min(state.elsewhereDelay * 2, ELSEWHERE_MAX_MS);
}

function scheduleListRefresh(delay = 300) {
  clearTimeout(state.listTimer);
  state.listTimer = setTimeout(refreshList, delay);
}

function resetConversation(workflowId) {
  closeStream();
  state.workflowId = workflowId;
  state.stickToBottom = true;
  state.sending = false;
  state.stopping = false;
  state.running = false;
  view.reset(workflowId);
  view.setRunning(false);
  showNotice('');
  showComposerError('');
  sidebar.select(workflowId);
  updateButtons();
  afterContentChange();
}

async function select(workflowId, { history: mode = 'push' } = {}) {
  const seq = ++state.selectSeq;
  resetConversation(workflowId);
  setUrl(workflowId, mode);
  els.thread.classList.add('is-loading');
  let data = null;
  try {
    data = await api.getWorkflow(workflowId);
  } catch (error) {
    if (seq !== state.selectSeq) return;
    els.thread.classList.remove('is-loading');
    if (error.status === 404) {
      showNotice('That conversation could not be found. It may belong to someone else.');
      state.workflowId = null;
      setUrl(null, 'replace');
      sidebar.select(null);
      afterContentChange();
      return;
    }
    // The server may be restarting: the stream will bring the history once it is back.
    showNotice(`${error.message} Retrying…`);
  }
  if (seq !== state.selectSeq) return;
  els.thread.classList.remove('is-loading');
  if (data) {
    view.loadHistory((data.items || []).map(normalizeChatdata).filter(Boolean));
    applyStatus(data.workflow?.status, data.workflow);
    if (data.workflow && !sidebar.get(workflowId)) sidebar.upsert({ ...data.workflow });
  }
  openStream(workflowId);
  state.stickToBottom = true;
  scrollToBottom();
  afterContentChange();
  if (!narrow.matches) els.prompt.focus({ preventScroll: true });
}

function newChat({ history: mode = 'push', focus = true } = {}) {
  state.selectSeq += 1;
  resetConversation(null);
  setUrl(null, mode);
  closeSidebar();
  if (focus) els.prompt.focus();
}

// ---- sending and stopping -------------------------------------------------------------

async function send(prompt, { fromComposer = true, retryOf = null } = {}) {
  if (typeof prompt !== 'string' || !prompt.trim()) {
    if (fromComposer) {
      els.prompt.focus();
      els.composer.classList.remove('nudge');
      void els.composer.offsetWidth; // restart the animation
      els.composer.classList.add('nudge');
    }
    return;
  }
  if (state.sending || state.running) return;
  const workflowId = state.workflowId;
  const seq = state.selectSeq;
  state.sending = true;
  showComposerError('');
  showNotice('');
  view.addPending(prompt);
  if (fromComposer) {
    els.prompt.value = '';
    autosize();
  }
  updateButtons();
  state.stickToBottom = true;
  scrollToBottom();
  let answer;
  try {
    answer = await api.start(prompt, workflowId);
  } catch (error) {
    state.sending = false;
    if (seq === state.selectSeq) {
      view.removePending();
      if (fromComposer && !els.prompt.value) {
        els.prompt.value = prompt;
        autosize();
      }
      showComposerError(error.message);
      if (error.status === 409 && workflowId) {
        setRunning(true);
        refreshStatus(workflowId);
      }
      afterContentChange();
    }
    updateButtons();
    return;
  }
  state.sending = false;
  if (seq !== state.selectSeq) {
    scheduleListRefresh(0);
    return;
  }
  if (retryOf != null) view.retired(retryOf);
  view.setPendingMessageId(answer?.messageId);
  // On a busy server the open stream may bring the whole round before this answer.
  if (!view.endedWith(answer?.messageId)) setRunning(true);
  const id = answer?.workflowId || workflowId;
  if (!workflowId && id) {
    state.workflowId = id;
    view.workflowId = id;
    setUrl(id, 'push');
    sidebar.upsert({ id, title: prompt.replace(/\s+/g, ' ').trim().slice(0, 80), status: 'running', updatedAt: Date.now() / 1000 });
    sidebar.select(id);
    openStream(id);
  } else if (!state.stream) {
    openStream(id);
  } else {
    sidebar.upsert({ id, status: 'running', updatedAt: Date.now() / 1000 });
    state.stream.resume();
  }
  updateButtons();
  scheduleListRefresh(500);
}

function retry(prompt, round) {
  send(prompt, { fromComposer: false, retryOf: round });
}

async function stop() {
  const workflowId = state.workflowId;
  if (!workflowId || !state.running || state.stopping) return;
  state.stopping = true;
  updateButtons();
  try {
    const answer = await api.stop(workflowId);
    if (state.workflowId === workflowId && answer && answer.status && answer.status !== 'running') {
      applyStatus(answer.status);
    }
  } catch (error) {
    state.stopping = false;
    showComposerError(error.message);
    updateButtons();
    return;
  }
  // The stream brings the partial reply and `stopped`; if it does not, ask.
  setTimeout(() => {
    if (state.workflowId === workflowId && state.running && state.stopping) refreshStatus(workflowId);
  }, 3000);
}

// ---- composer -----------------------------------------------------------------------

function autosize() {
  els.prompt.style.height = 'auto';
  const max = Math.round(window.innerHeight * 0.4);
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, max)}px`;
  els.prompt.style.overflowY = els.prompt.scrollHeight > max ? 'auto' : 'hidden';
}

els.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  if (els.send.getAttribute('aria-disabled') === 'true' && !els.prompt.value.trim()) {
    send('');
    return;
  }
  send(els.prompt.value);
});

els.prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    if (state.running) return;
    send(els.prompt.value);
  } else if (event.key === 'Escape' && state.running) {
    event.preventDefault();
    stop();
  }
});

els.prompt.addEventListener('input', () => {
  autosize();
  updateButtons();
  if (!els.composerError.hidden) showComposerError('');
});

els.stop.addEventListener('click', () => stop());
document.querySelector('.skip-link').addEventListener('click', (event) => {
  event.preventDefault();
  els.prompt.focus();
});
els.newChat.addEventListener('click', () => newChat());

// ---- the sidebar on narrow screens --------------------------------------------------------

function openSidebar() {
  els.app.classList.add('nav-open');
  els.scrim.hidden = false;
  els.openSidebar.setAttribute('aria-expanded', 'true');
  (els.sidebar.querySelector('[aria-current="page"]') || els.newChat).focus();
}

function closeSidebar() {
  if (!els.app.classList.contains('nav-open')) return;
  els.app.classList.remove('nav-open');
  els.scrim.hidden = true;
  els.openSidebar.setAttribute('aria-expanded', 'false');
  if (narrow.matches) els.openSidebar.focus();
}

els.openSidebar.addEventListener('click', openSidebar);
els.closeSidebar.addEventListener('click', closeSidebar);
els.scrim.addEventListener('click', closeSidebar);
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && els.app.classList.contains('nav-open')) closeSidebar();
});
narrow.addEventListener('change', () => { if (!narrow.matches) closeSidebar(); });

// ---- history and visibility ---------------------------------------------------------

window.addEventListener('popstate', () => {
  const id = idFromUrl();
  if (id === state.workflowId) return;
  if (id) select(id, { history: 'none' });
  else newChat({ history: 'none', focus: false });
});

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    scheduleListRefresh(0);
    state.stream?.resume();
  }
});

// Keep relative times fresh.
setInterval(() => sidebar.render(), 60_000);

// ---- start --------------------------------------------------------------------------------

async function init() {
  setConnState('idle');
  autosize();
  updateButtons();
  const id = idFromUrl();
  const listed = refreshList();
  if (id) {
    await Promise.all([select(id, { history: 'replace' }), listed]);
  } else {
    const ok = await listed;
    const latest = sidebar.workflows[0];
    if (latest) await select(String(latest.id), { history: 'replace' });
    else {
      newChat({ history: 'none', focus: !narrow.matches });
      if (!ok) showNotice('Could not load your conversations. Check your connection.');
    }
  }
  document.documentElement.dataset.ready = 'true';
}

init();
