// Signing in to a server with authentication on (`transcode serve
// --auth-config`): the viewer's page and scripts are public, every DICOMweb
// and IIIF request needs a credential. The user pastes an API key or a bearer
// token into the form; it is kept in sessionStorage (this tab only, gone when
// it closes) and sent as `Authorization: Bearer ...` on every request to this
// origin: fetch (searches, thumbnails, the progressive frame loaders), the
// image loader's XHR (`beforeSend`) and OpenSeadragon's (`ajaxHeaders`).
// A 401 forgets the credential and brings the form back.

const KEY = 'transcode.credential';
const plainFetch = window.fetch.bind(window);
let waiting = null;

/** Raised for a 401: the caller waits for `signedIn()` and tries again. */
export class Unauthorized extends Error {}

/** The headers that carry the credential (none before signing in). */
export function authHeaders() {
  const credential = sessionStorage.getItem(KEY);
  return credential ? { Authorization: `Bearer ${credential}` } : {};
}

/** Whether a credential is kept (thumbnails are then fetched, not linked). */
export const hasCredential = () => sessionStorage.getItem(KEY) !== null;

/** The server refused the credential (or there was none): forget it and show the form. */
export function unauthorized() {
  const had = hasCredential();
  sessionStorage.removeItem(KEY);
  showForm(had ? 'The server refused this credential (401): it may have expired or been revoked.' : '');
}

/** Resolves once the user has submitted a credential. */
export function signedIn() {
  if (!waiting) {
    waiting = new Promise((resolve) => {
      const form = document.getElementById('login');
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        const input = document.getElementById('credential');
        sessionStorage.setItem(KEY, input.value.trim());
        input.value = '';
        form.hidden = true;
        waiting = null;
        resolve();
      }, { once: true });
    });
  }
  return waiting;
}

function showForm(message) {
  document.getElementById('login-error').textContent = message;
  document.getElementById('login').hidden = false;
  document.getElementById('credential').focus();
}

/** `fetch` with the credential on requests to this origin; a 401 shows the form. */
window.fetch = async (input, init = {}) => {
  const url = new URL(input instanceof Request ? input.url : String(input), location.href);
  if (url.origin !== location.origin) {
    return plainFetch(input, init);
  }
  const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
  for (const [name, value] of Object.entries(authHeaders())) {
    if (!headers.has(name)) {
      headers.set(name, value);
    }
  }
  const response = await plainFetch(input, { ...init, headers });
  if (response.status === 401) {
    unauthorized();
  }
  return response;
};
