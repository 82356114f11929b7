"""A page's layout measured in headless Chromium (Debian's ``chromium`` package), for the report
page's tests: a copy of the page gets a script that hooks errors and, once the page has loaded,
measures it and writes the result into the DOM, which ``--dump-dom`` prints."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile

# Without the background-networking flags a closed network refuses Chromium's own connections.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

HOOKS = """<script>
window.__errors = [];
addEventListener("error", (e) => __errors.push(String(e.message || (e.target && e.target.src) || e)), true);
addEventListener("unhandledrejection", (e) => __errors.push("unhandled rejection: " + e.reason));
const __consoleError = console.error;
console.error = (...args) => { __errors.push(args.join(" ")); __consoleError(...args); };
</script>"""

# After load: the page's width and scroll width; every element outside a scrolling box that
# reaches past the page's edges; every figure's image (loaded? natural and shown width); and what
# a click on the first figure shows (the full-size view). All synchronous: --dump-dom does not
# wait for promises such as an image's decode().
MEASURE = """<script>
addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const scrolls = (el) => {
    for (let a = el.parentElement; a; a = a.parentElement) {
      if (["auto", "scroll"].includes(getComputedStyle(a).overflowX)) return true;
    }
    return false;
  };
  const wide = [];
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if ((r.right > width + 0.5 || r.left < -0.5) && !scrolls(el)) {
      const text = (el.textContent || el.alt || "").slice(0, 60);
      const where = `${Math.round(r.left)}..${Math.round(r.right)}`;
      wide.push(`${el.tagName.toLowerCase()}.${el.className} ${where}: ${text}`);
    }
  }
  const style = getComputedStyle(document.body);
  const room = document.body.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const images = [...document.querySelectorAll("figure img")].map((img) => ({
    alt: img.alt, loaded: img.complete && img.naturalWidth > 0,
    natural: img.naturalWidth, shown: img.getBoundingClientRect().width,
  }));
  const result = {width, scrollWidth: document.documentElement.scrollWidth, room, wide, images,
                  height: document.documentElement.scrollHeight, errors: window.__errors};
  // the full-size view: open (synchronously, so no decoding races the dump), its image the
  // figure's own, with no rule that scales it down
  const first = document.querySelector("figure img");
  const zoom = document.getElementById("zoom");
  result.zoom = {open: false, same: false, unscaled: false, closed: false};
  if (first && zoom) {
    first.click();
    const zoomed = zoom.querySelector("img");
    result.zoom.open = !zoom.hidden && zoom.getBoundingClientRect().width === width;
    result.zoom.same = Boolean(zoomed) && zoomed.src === first.src;
    result.zoom.unscaled = Boolean(zoomed) && getComputedStyle(zoomed).maxWidth === "none" &&
                           !zoomed.getAttribute("width") && !zoomed.style.width;
    zoom.click();
    result.zoom.closed = zoom.hidden;
  }
  const out = document.createElement("pre");
  out.id = "__measured";
  out.hidden = true;
  out.textContent = JSON.stringify(result);
  document.body.append(out);
});
</script>"""


WIDTHS = (1280, 800)


def check_page(page: str) -> dict[int, dict]:
    """Assert what a reader needs of the HTML file ``page`` at each of ``WIDTHS`` (pixels): no error
    or console message; nothing wider than the page outside a scrolling box; every figure loaded,
    at its natural width unless the page is narrower; a click shows it full size. Returns the
    measurements by width."""
    chromium = find_chromium()
    measured = {}
    for width in WIDTHS:
        m = measure(chromium, page, width)
        assert m["errors"] == [] and m["console"] == [], (width, m["errors"], m["console"])
        assert m["wide"] == [] and m["scrollWidth"] <= m["width"], (width, m["wide"][:5])
        assert m["images"], "no figure on the page"
        for image in m["images"]:
            assert image["loaded"], (width, image["alt"])
            # natural width (plus its 1 px border), shrunk only to the page's text width
            assert min(image["natural"], m["room"]) - 16 <= image["shown"] <= image["natural"] + 2.5, (
                width,
                image,
                m["room"],
            )
        zoom = m["zoom"]
        assert zoom == {"open": True, "same": True, "unscaled": True, "closed": True}, zoom
        measured[width] = m
    return measured


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH; None when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _run(chromium: str, page: str, *flags: str) -> subprocess.CompletedProcess:
    """Chromium on the file ``page`` with a fresh profile and ``flags``."""
    with tempfile.TemporaryDirectory() as profile:
        argv = [chromium, *FLAGS, f"--user-data-dir={profile}", *flags, "file://" + os.path.abspath(page)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=180)


def measure(chromium: str, page: str, width: int, height: int = 900) -> dict:
    """The layout of the HTML file ``page`` at ``width`` x ``height`` CSS pixels (see ``MEASURE``),
    with ``console`` added: the console lines Chromium logged."""
    with open(page, encoding="utf-8") as handle:
        text = handle.read()
    with tempfile.TemporaryDirectory() as folder:
        copy = os.path.join(folder, "page.html")
        with open(copy, "w", encoding="utf-8") as handle:
            head = text.index("<head>") + len("<head>")
            handle.write(text[:head] + HOOKS + text[head:].replace("</body>", MEASURE + "</body>"))
        flags = ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
        done = _run(chromium, copy, *flags, f"--window-size={width},{height}", "--dump-dom")
    found = re.search(r'<pre id="__measured" hidden="">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no measurement from Chromium (exit code {done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    result["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return result


def screenshot(chromium: str, page: str, path: str, width: int, height: int) -> None:
    """A PNG of the top ``height`` pixels of ``page`` at ``width`` pixels wide."""
    done = _run(chromium, page, f"--window-size={width},{height}", f"--screenshot={path}")
    assert os.path.isfile(path), done.stderr[-2000:]
