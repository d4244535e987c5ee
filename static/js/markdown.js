// Markdown to safe DOM: marked parses, raw HTML in the source is shown as text, and
// DOMPurify (allow-list) sanitizes whatever comes out before it touches the page.
import { Marked } from '/static/vendor/marked/marked.esm.js';
import DOMPurify from '/static/vendor/dompurify/purify.es.js';

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

// Raw HTML written by the model or the user is never markup: the lexer does not recognize
// it (so it is lexed as text and escaped), and should an HTML token appear anyway it is
// rendered as text too. DOMPurify below is the last line, not the only one.
const tokenizer = {
  html() { return undefined; },
  tag() { return undefined; },
};

const renderer = {
  html(token) {
    const text = escapeHtml(token.text ?? token.raw ?? '');
    return token.block ? `<p>${text.replace(/\n/g, '<br>')}</p>` : text;
  },
  // Images would load from anywhere (and the CSP blocks them): show them as links instead.
  image(token) {
    const label = escapeHtml(token.text || token.href || 'image');
    return `<a href="${escapeHtml(token.href || '')}">${label}</a>`;
  },
};

const assistantMd = new Marked({ gfm: true, breaks: false, async: false });
assistantMd.use({ tokenizer, renderer });
const userMd = new Marked({ gfm: true, breaks: true, async: false });
userMd.use({ tokenizer, renderer });

const PURIFY = {
  ALLOWED_TAGS: [
    'a', 'p', 'br', 'hr', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'strong', 'em', 'b', 'i', 'del', 's',
    'code', 'pre', 'blockquote', 'ul', 'ol', 'li', 'table', 'thead', 'tbody', 'tr', 'th', 'td',
    'sup', 'sub', 'kbd', 'span', 'input',
  ],
  ALLOWED_ATTR: ['href', 'title', 'class', 'start', 'align', 'type', 'checked', 'disabled'],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    if (node.hasAttribute('href')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
  } else if (node.tagName === 'INPUT') {
    // Only the read-only checkboxes of GFM task lists.
    if ((node.getAttribute('type') || '').toLowerCase() !== 'checkbox') node.remove();
    else node.setAttribute('disabled', '');
  }
  if (node.hasAttribute && node.hasAttribute('class')) {
    // Keep only code-language hints: model text must not borrow the page's own classes.
    const kept = node.getAttribute('class').split(/\s+/).filter((c) => /^language-[\w+#.-]{1,40}$/.test(c));
    if (kept.length) node.setAttribute('class', kept.join(' '));
    else node.removeAttribute('class');
  }
});

/** A sanitized DocumentFragment for `text` rendered as Markdown. */
export function renderMarkdown(text, { role = 'assistant' } = {}) {
  const md = role === 'user' ? userMd : assistantMd;
  let html;
  try {
    html = md.parse(String(text ?? ''));
  } catch {
    html = `<p>${escapeHtml(text)}</p>`;
  }
  return DOMPurify.sanitize(html, PURIFY);
}

/** Replace the children of `el` with `text` rendered as Markdown, adding copy buttons to code blocks. */
export function setMarkdown(el, text, opts) {
  const fragment = renderMarkdown(text, opts);
  for (const pre of fragment.querySelectorAll('pre')) decorateCodeBlock(pre);
  el.replaceChildren(fragment);
}

function decorateCodeBlock(pre) {
  const code = pre.querySelector('code');
  const wrap = document.createElement('div');
  wrap.className = 'code-block';
  const bar = document.createElement('div');
  bar.className = 'code-bar';
  const lang = document.createElement('span');
  lang.className = 'code-lang';
  const match = code && /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
  lang.textContent = match ? match[1] : 'code';
  const copy = document.createElement('button');
  copy.type = 'button';
  copy.className = 'code-copy';
  copy.textContent = 'Copy';
  copy.setAttribute('aria-label', 'Copy code');
  bar.append(lang, copy);
  pre.replaceWith(wrap);
  wrap.append(bar, pre);
}

// One listener for every copy button, present and future.
document.addEventListener('click', async (event) => {
  const button = event.target instanceof Element && event.target.closest('.code-copy');
  if (!button) return;
  const code = button.closest('.code-block')?.querySelector('pre');
  if (!code) return;
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Press Ctrl+C';
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  setTimeout(() => { button.textContent = 'Copy'; }, 1500);
});

/** Plain text of Markdown, for announcements and titles. */
export function plainText(text) {
  const div = document.createElement('div');
  div.append(renderMarkdown(text));
  return div.textContent.replace(/\s+/g, ' ').trim();
}
