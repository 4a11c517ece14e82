"""The demo page: `GET /` with `Accept: text/html`.

One self-contained page (function/demo.html: inline CSS and JS, no external assets) that posts
multipart fusions to `/` with fetch and shows the result beside the target, the stage timings from
`Server-Timing` and the equivalent curl command.

With AUTH_TOKEN set, a request without the token gets 401 whose body is a small "unlock" page: its
script fetches the page again with `Authorization: Bearer …` and replaces the document with it
(document.write). The token stays in the tab's sessionStorage, never in a URL.

Both pages share one Content-Security-Policy that allows exactly their inline scripts and styles by
SHA-256 hash: a nonce would not do, because the page written by the unlock page runs under the unlock
page's policy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import flask

PAGE = Path(__file__).with_name("demo.html").read_text(encoding="utf-8")

UNLOCK = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>facefusion-fn: token required</title>
<link rel="icon" href="data:,">
<style>
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: grid; place-items: center; background: #f4f5f7; color: #1d2330;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
form { background: #fff; border: 1px solid #d9dde5; border-radius: 10px; padding: 1.6rem 1.8rem; width: 22rem; }
h1 { font-size: 1.15rem; margin: 0 0 .4rem; }
p { color: #5d6678; margin: 0 0 1rem; }
input, button { font: inherit; width: 100%; padding: .45rem .55rem; border-radius: 6px; }
input { border: 1px solid #d9dde5; margin: .3rem 0 .8rem; }
button { border: 0; background: #3b5bdb; color: #fff; font-weight: 600; cursor: pointer; }
#message { color: #c92a2a; margin: .8rem 0 0; min-height: 1.2em; }
</style>
</head>
<body>
<form id="unlock">
  <h1>facefusion-fn demo</h1>
  <p>This service needs its token (<code>AUTH_TOKEN</code>).</p>
  <label for="token">Token</label>
  <input id="token" type="password" autocomplete="current-password" required autofocus>
  <button id="open" type="submit">Open the demo</button>
  <p id="message" role="alert"></p>
</form>
<script>
(function () {
  "use strict";
  const KEY = "facefusion-token";
  const input = document.getElementById("token");
  const message = document.getElementById("message");
  async function open(token) {
    message.textContent = "";
    let r;
    try {
      r = await fetch(location.href, { headers: { "Accept": "text/html", "Authorization": "Bearer " + token }, cache: "no-store" });
    } catch (e) {
      message.textContent = "The service could not be reached.";
      return;
    }
    if (!r.ok) {
      message.textContent = r.status === 401 ? "That token was refused." : "The service answered " + r.status + ".";
      try { sessionStorage.removeItem(KEY); } catch (e) { /* ignore */ }
      return;
    }
    const html = await r.text();
    try { sessionStorage.setItem(KEY, token); } catch (e) { /* the page then asks again */ }
    document.open();
    document.write(html);
    document.close();
  }
  document.getElementById("unlock").addEventListener("submit", (e) => {
    e.preventDefault();
    open(input.value.trim());
  });
  let saved = null;
  try { saved = sessionStorage.getItem(KEY); } catch (e) { /* ignore */ }
  if (saved) {
    input.value = saved;
    open(saved);
  }
})();
</script>
</body>
</html>
"""


def _hashes(tag: str) -> str:
    bodies = [m for page in (PAGE, UNLOCK) for m in re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)]
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)


CSP = ("default-src 'none'; "
       f"script-src {_hashes('script')}; style-src {_hashes('style')}; "
       "img-src blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Vary": "Accept, Authorization",
}


def wants_html(request: flask.Request) -> bool:
    """A browser's navigation: text/html preferred over JSON (`*/*` alone, as curl sends, is not)."""
    return request.accept_mimetypes.best_match(("application/json", "text/html")) == "text/html"


def page() -> flask.Response:
    return flask.Response(PAGE, status=200, mimetype="text/html", headers=HEADERS)


def unlock() -> flask.Response:
    """The 401 a browser gets without the token: a token form that loads the page with it."""
    return flask.Response(UNLOCK, status=401, mimetype="text/html",
                          headers={**HEADERS, "WWW-Authenticate": 'Bearer realm="facefusion"'})
