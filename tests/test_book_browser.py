"""The built book in headless Chromium, as a reader with no internet sees it.

Runs after the book build (`make test` builds it, then runs this file): it reads
`_build/html`, or the folder in $BOOK_HTML. Every page of the table of contents is
checked: formulas rendered by the local MathJax, images loaded with alt text and a
caption, no request leaving the machine, no JavaScript error, no broken internal link,
and nothing wider than the text column at 1280 px. Each page prints one line of counts.
Where Chromium is missing the test skips, except under CI (CI=true), where that is a
failure.
"""

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
IN_CI = os.environ.get("CI", "").lower() == "true"
# The width at which the book is read on a laptop; the text column is narrowest there
# while both sidebars are shown.
VIEWPORT = {"width": 1280, "height": 900}
# Code is formatted at 88 columns: a line that long must fit a code cell unwrapped.
CODE_COLUMNS = 88
# A figure drawn wider than the column is scaled down, and its labels with it.
MIN_FIGURE_SCALE = 0.8
# An alt text must describe the picture, not name it ("image", "output_12_0.png").
GENERIC_ALT = re.compile(
    r"^(image|figure|plot|graph|png|output.*|.*\.(png|svg|jpe?g))$"
)


def pages() -> list[str]:
    """Every page of the table of contents, as paths relative to the HTML folder."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return [f"{file}.html" for file in files]


def unavailable(reason: str):
    """Skip on a laptop, fail under CI: CI must run this test."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true, so this is a failure)")
    pytest.skip(reason)


def chromium_path() -> str | None:
    """Debian's chromium, or the browser named in $CHROMIUM."""
    names = [
        os.environ.get("CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
    ]
    return next((path for name in names if name and (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for every page; playwright drives the system's browser."""
    executable = chromium_path()
    if executable is None:
        unavailable("Chromium not found: apt-get install chromium, or set $CHROMIUM")
    if not (HTML / pages()[0]).exists():
        unavailable(f"no built book in {HTML}: run `make book` first")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


class Ids(HTMLParser):
    """The ids of a page's elements, the targets of `#fragment` links."""

    def __init__(self, text: str):
        super().__init__()
        self.ids: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.ids.update(value for name, value in attrs if name == "id" and value)


_ids: dict[Path, set[str]] = {}


def ids_of(path: Path) -> set[str]:
    """The ids on the page at path, read once."""
    if path not in _ids:
        _ids[path] = Ids(path.read_text(encoding="utf-8")).ids
    return _ids[path]


# Runs in the page once MathJax is done: everything the checks below need, measured.
MEASURE = """([columns]) => {
  const article = document.querySelector("article.bd-article");
  const style = getComputedStyle(article);
  const box = article.getBoundingClientRect();
  const left = box.left + parseFloat(style.paddingLeft);
  const right = box.right - parseFloat(style.paddingRight);
  // Visible prose: the article's text without code, outputs and rendered maths.
  const prose = article.cloneNode(true);
  prose.querySelectorAll("pre, code, mjx-container, script, style")
    .forEach(e => e.remove());
  const blocks = [...article.querySelectorAll(
    "div.highlight pre, div.cell_output > *, table, img, mjx-container[display='true']"
  )].filter(e => e.getClientRects().length > 0);
  // How far a block's content reaches: a block spans the column, its text need not.
  const range = document.createRange();
  const reach = e => {
    const r = e.getBoundingClientRect();
    if (e.scrollWidth > e.clientWidth + 1) return {width: e.scrollWidth, lines: 0};
    if (e.tagName === "IMG") return {width: r.width, lines: 0};
    let end = r.left;
    const tops = new Set();
    const texts = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
    for (let t = texts.nextNode(); t; t = texts.nextNode()) {
      range.selectNodeContents(t);
      for (const q of range.getClientRects()) {
        end = Math.max(end, q.right);
        tops.add(Math.round(q.top));
      }
    }
    e.querySelectorAll("img, mjx-math").forEach(
      i => { end = Math.max(end, i.getBoundingClientRect().right); });
    // A code line too long for the column wraps: more line boxes than lines.
    const lines = e.tagName === "PRE"
      ? Math.max(0, tops.size - e.textContent.replace(/\\n$/, "").split("\\n").length)
      : 0;
    return {width: end - r.left, lines: lines};
  };
  const widths = blocks.map(e => {
    const r = e.getBoundingClientRect();
    const {width, lines} = reach(e);
    return {
      what: e.closest(".cell_output") ? "output" : e.tagName.toLowerCase(),
      text: (e.innerText || e.getAttribute("alt") || "").slice(0, 60),
      width: width,
      wrapped: lines,
      overflow: e.scrollWidth - e.clientWidth,
      right: r.right,
    };
  });
  // How wide CODE_COLUMNS characters are in a code cell's font.
  let codeFits = null;
  const pre = article.querySelector("div.cell_input div.highlight pre");
  if (pre) {
    const probe = document.createElement("span");
    probe.textContent = "x".repeat(columns);
    // Unwrapped, so that its width is that of one line of that many columns.
    probe.style.whiteSpace = "pre";
    probe.style.display = "inline-block";
    pre.appendChild(probe);
    const cs = getComputedStyle(pre);
    const padding = parseFloat(cs.paddingLeft) + parseFloat(cs.paddingRight);
    const inner = pre.clientWidth - padding;
    codeFits = {probe: probe.getBoundingClientRect().width, inner: inner};
    probe.remove();
  }
  return {
    column: right - left,
    right: right,
    formulas: article.querySelectorAll("mjx-container").length,
    mathSources: [...article.querySelectorAll(".math")].map(e => ({
      rendered: e.querySelector("mjx-container") !== null,
      text: e.textContent.slice(0, 60),
    })),
    prose: prose.innerText,
    images: [...article.querySelectorAll("img")].map(img => ({
      src: img.getAttribute("src"),
      loaded: img.complete && img.naturalWidth > 0,
      alt: (img.getAttribute("alt") || "").trim(),
      caption:
        img.closest("figure")?.querySelector("figcaption")?.innerText.trim() || "",
      scale:
        img.naturalWidth ? img.getBoundingClientRect().width / img.naturalWidth : 0,
    })),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    blocks: widths,
    codeFits: codeFits,
  };
}"""


@pytest.mark.parametrize("page", pages())
def test_page_renders_offline_and_fits_the_column(browser, page, capsys):
    outside: list[str] = []
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()

    def keep_local(route):
        # Only the book's own files may load; anything else is recorded and refused.
        if urlsplit(route.request.url).scheme in ("file", "data", "blob", "about"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    tab.route("**/*", keep_local)
    # An uncaught JavaScript error: a script of the page stopped part way.
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    tab.goto((HTML / page).as_uri(), wait_until="load")
    # MathJax typesets after load; its startup promise settles when all formulas are.
    tab.evaluate("() => window.MathJax?.startup?.promise")
    found = tab.evaluate(MEASURE, [CODE_COLUMNS])
    context.close()

    problems = [f"request leaving the machine: {url}" for url in outside]
    problems += [f"JavaScript error: {error}" for error in script_errors]

    # Formulas: each maths element holds a rendered MathJax node; no TeX left in prose.
    problems += [
        f"formula not rendered: {m['text']!r}"
        for m in found["mathSources"]
        if not m["rendered"]
    ]
    for raw in re.findall(r"\\[(\[]|\$\$|\\[A-Za-z]+", found["prose"]):
        problems.append(f"raw TeX in the visible text: {raw!r}")

    # Images: loaded, described, captioned and not shrunk below MIN_FIGURE_SCALE.
    for image in found["images"]:
        name = image["src"]
        if not image["loaded"]:
            problems.append(f"image does not load: {name}")
        alt = image["alt"]
        if len(alt.split()) < 4 or GENERIC_ALT.match(alt.lower()):
            problems.append(f"image without a meaningful alt text: {name} alt={alt!r}")
        if not image["caption"]:
            problems.append(f"image without a caption: {name}")
        if image["loaded"] and image["scale"] < MIN_FIGURE_SCALE:
            problems.append(
                f"image shrunk to {image['scale']:.0%} of its width: {name}"
            )

    # Internal links: the file exists, and so does the element a #fragment names.
    for link in found["links"]:
        parts = urlsplit(link)
        if parts.scheme != "file":
            continue
        target = Path(unquote(parts.path))
        if not target.is_file():
            problems.append(f"broken link: {link}")
        elif parts.fragment and unquote(parts.fragment) not in ids_of(target):
            problems.append(f"link to a missing anchor: {link}")

    # Widths: no block is wider than the text column or scrolls sideways.
    for block in found["blocks"]:
        if block["overflow"] > 1 or block["right"] > found["right"] + 1:
            problems.append(
                f"{block['what']} wider than the column "
                f"({block['width']:.0f} > {found['column']:.0f} px): {block['text']!r}"
            )
    fits = found["codeFits"]
    if fits and fits["probe"] > fits["inner"] + 1:
        problems.append(
            f"{CODE_COLUMNS} columns of code need {fits['probe']:.0f} px, "
            f"a code cell has {fits['inner']:.0f} px"
        )

    widest = max((b["width"] for b in found["blocks"]), default=0)
    wrapped = sum(b["wrapped"] for b in found["blocks"])
    with capsys.disabled():
        print(
            f"\n{page:45} formulas {found['formulas']:4d}  images "
            f"{len(found['images']):2d}  widest block {widest:4.0f} px "
            f"in a {found['column']:.0f} px column, {wrapped} long lines wrapped",
            end="",
        )
    assert not problems, "\n".join(problems)
