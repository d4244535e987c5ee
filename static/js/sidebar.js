// The conversation list: most recently active first, the current one marked.

const STATUS_LABEL = { running: 'replying', completed: '', stopped: 'stopped', failed: 'failed' };

function toMillis(value) {
  if (typeof value === 'number' && Number.isFinite(value)) return value < 1e12 ? value * 1000 : value;
  if (typeof value === 'string' && value) {
    const asNumber = Number(value);
    if (Number.isFinite(asNumber)) return toMillis(asNumber);
    const parsed = Date.parse(value);
    return Number.isNaN(parsed) ? null : parsed;
  }
  return null;
}

export function relativeTime(value, now = Date.now()) {
  const ms = toMillis(value);
  if (ms == null) return '';
  const seconds = Math.max(0, (now - ms) / 1000);
  if (seconds < 45) return 'now';
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h`;
  const date = new Date(ms);
  if (seconds < 6 * 86400) return date.toLocaleDateString(undefined, { weekday: 'short' });
  return date.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

export const titleOf = (workflow) => {
  // Titles are the first prompt's words: drop Markdown emphasis and code marks for display.
  const title = typeof workflow?.title === 'string' ? workflow.title.replace(/\*\*|__|`/g, '').replace(/\s+/g, ' ').trim() : '';
  return title || 'New conversation';
};

export class Sidebar {
  constructor(list, empty, onSelect) {
    this.list = list;
    this.empty = empty;
    this.onSelect = onSelect;
    this.workflows = [];
    this.currentId = null;
    list.addEventListener('click', (event) => {
      const link = event.target instanceof Element && event.target.closest('a[data-id]');
      if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      this.onSelect(link.dataset.id);
    });
  }

  set(workflows) {
    this.workflows = Array.isArray(workflows) ? workflows.filter((w) => w && w.id != null) : [];
    this.render();
  }

  get(id) {
    return this.workflows.find((w) => String(w.id) === String(id)) || null;
  }

  /** Show a change before the server's list catches up (a new or newly active conversation). */
  upsert(workflow) {
    const index = this.workflows.findIndex((w) => String(w.id) === String(workflow.id));
    const merged = { ...(index >= 0 ? this.workflows[index] : {}), ...workflow };
    if (index >= 0) this.workflows.splice(index, 1);
    this.workflows.unshift(merged);
    this.render();
  }

  setStatus(id, status) {
    const w = this.get(id);
    if (w && w.status !== status) {
      w.status = status;
      this.render();
    }
  }

  select(id) {
    this.currentId = id;
    for (const link of this.list.querySelectorAll('a[data-id]')) {
      if (link.dataset.id === String(id)) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
  }

  render() {
    const focusedId = document.activeElement?.closest?.('a[data-id]')?.dataset.id;
    const items = this.workflows.map((w) => {
      const li = document.createElement('li');
      const link = document.createElement('a');
      link.className = 'conv-link';
      link.href = `/?c=${encodeURIComponent(w.id)}`;
      link.dataset.id = String(w.id);
      link.dataset.status = String(w.status || '');
      if (String(w.id) === String(this.currentId)) link.setAttribute('aria-current', 'page');
      const title = document.createElement('span');
      title.className = 'conv-title-text';
      title.textContent = titleOf(w);
      const meta = document.createElement('span');
      meta.className = 'conv-meta';
      const label = STATUS_LABEL[w.status] ?? '';
      if (label) {
        const status = document.createElement('span');
        status.className = 'conv-status';
        status.textContent = label;
        meta.append(status);
      }
      const when = document.createElement('span');
      when.className = 'conv-when';
      when.textContent = relativeTime(w.updatedAt ?? w.createdAt);
      meta.append(when);
      link.append(title, meta);
      li.append(link);
      return li;
    });
    this.list.replaceChildren(...items);
    this.empty.hidden = items.length > 0;
    if (focusedId) this.list.querySelector(`a[data-id="${CSS.escape(focusedId)}"]`)?.focus();
  }
}
