// The HTTP side of the contract (shared/API.md): JSON in, JSON out, errors as ApiError.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

const FALLBACK_MESSAGES = {
  0: 'Could not reach the server. Check your connection and try again.',
  404: 'This conversation does not exist.',
  409: 'A reply is still being written. Stop it or wait for it to finish.',
  413: 'This message is too long.',
};

async function request(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', FALLBACK_MESSAGES[0]);
  }
  let payload = null;
  const text = await response.text().catch(() => '');
  if (text) {
    try { payload = JSON.parse(text); } catch { payload = null; }
  }
  if (!response.ok) {
    const error = payload && typeof payload === 'object' ? payload.error : null;
    const message = (error && typeof error.message === 'string' && error.message)
      || FALLBACK_MESSAGES[response.status]
      || `The server answered ${response.status}.`;
    throw new ApiError(response.status, (error && error.code) || `http_${response.status}`, message);
  }
  return payload;
}

const enc = encodeURIComponent;

export const api = {
  listWorkflows: () => request('GET', '/api/chatbot'),
  getWorkflow: (id) => request('GET', `/api/chatbot/${enc(id)}`),
  start: (prompt, workflowId) => request('POST', '/api/chatbot/start', { prompt, workflowId: workflowId || null }),
  stop: (id) => request('POST', `/api/chatbot/${enc(id)}/stop`),
  streamUrl: (id, lastEventId) => `/api/chatbot/${enc(id)}/stream${lastEventId ? `?lastEventId=${enc(lastEventId)}` : ''}`,
};

/** A history entry as {type, createdAt, item}, whether the server sends chatdata or bare items. */
export function normalizeChatdata(entry) {
  if (!entry || typeof entry !== 'object') return null;
  if (entry.item && typeof entry.item === 'object' && typeof entry.type === 'string') return entry;
  if ('role' in entry && 'content' in entry) return { type: 'message', createdAt: entry.createdAt, item: entry };
  if ('messageId' in entry && 'index' in entry) return { type: 'delta', createdAt: entry.createdAt, item: entry };
  if ('message' in entry && 'status' in entry) return { type: 'log', createdAt: entry.createdAt, item: entry };
  return null;
}
