"""MkDocs hooks of the documentation site (mkdocs.yml), run by `bash scripts/docs.sh`.

* The home page is the repository's README.md, its links into docs/ made relative to the
  site, so the README and the site's first page are one text.
* A link from a page to a file of the repository outside docs/ (a module, a config) is
  checked to exist and shown as the file's path: the site has no copy of it.
* Mathematics ($...$, $$...$$, marked by pymdownx.arithmatex) is converted to MathML at
  build time with latex2mathml, so the pages render formulas offline, with no script.
"""

from __future__ import annotations

import html
import pathlib
import re

import griffe
import latex2mathml.converter
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

REPO = pathlib.Path(__file__).resolve().parents[1]
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
_MATH = re.compile(r'<(span|div) class="arithmatex">\\[(\[](.*?)\\[)\]]</\1>', re.S)


def on_files(files, config):
  readme = (REPO / "README.md").read_text()

  def from_docs(match):  # README links are relative to the repository, the page's to docs/
    text, target = match.groups()
    if "://" in target or target.startswith(("#", "mailto:")):
      return match.group(0)
    target = target[len("docs/") :] if target.startswith("docs/") else f"../{target}"
    return f"[{text}]({target})"

  files.append(File.generated(config, "index.md", content=_LINK.sub(from_docs, readme)))
  return files


def on_page_markdown(markdown, page, config, files):
  docs = pathlib.Path(config["docs_dir"]).resolve()
  here = (docs / page.file.src_uri).parent

  def outside(match):
    text, target = match.groups()
    path = target.split("#")[0]
    if not path or "://" in path or path.startswith(("mailto:", "#")):
      return match.group(0)
    resolved = (here / path).resolve()
    if resolved.is_relative_to(docs):
      return match.group(0)
    if not resolved.exists():
      raise PluginError(f"{page.file.src_uri}: the link to {target!r} names no file.")
    return f"{text} (`{resolved.relative_to(REPO)}`)"

  return _LINK.sub(outside, markdown)


def on_page_content(content, page, config, files):
  def mathml(match):
    tag, latex = match.groups()
    display = "block" if tag == "div" else "inline"
    return latex2mathml.converter.convert(html.unescape(latex).strip(), display=display)

  return _MATH.sub(mathml, content)


def fence_doctests(text: str) -> str:
  """Wraps each doctest of a docstring (from a `>>>` line to the next blank line) in a
  ```pycon fence at its own indentation, so that Markdown shows it as code, not as quotes."""
  out, fence = [], None
  for line in text.split("\n"):
    stripped = line.lstrip()
    if fence is None and stripped.startswith(">>>"):
      fence = line[: len(line) - len(stripped)]
      out.append(f"{fence}```pycon")
    elif fence is not None and not stripped:
      out.append(f"{fence}```")
      fence = None
    out.append(line)
  if fence is not None:
    out.append(f"{fence}```")
  return "\n".join(out)


class DoctestFences(griffe.Extension):
  """Griffe extension (mkdocs.yml): doctests of every docstring shown as code blocks."""

  def on_instance(self, *, obj, **kwargs) -> None:
    if obj.docstring is not None:
      obj.docstring.value = fence_doctests(obj.docstring.value)
