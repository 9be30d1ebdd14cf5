"""The documentation: every relative link of README.md and docs/ names a file (and a
heading) that exists; every public name has a docstring; the site builds (slow)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_LINK = re.compile(r"(?<!`)\[[^\]]+\]\(([^)\s]+)\)")


def _anchors(page: pathlib.Path) -> set[str]:
  """The ids Markdown's toc extension gives the headings of `page`."""
  text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
  ids = set()
  for title in re.findall(r"^#+ (.+)$", text, re.M):
    slug = re.sub(r"[^\w\s-]", "", title.replace("`", "").lower()).strip()
    ids.add(re.sub(r"[-\s]+", "-", slug))
  return ids


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
  text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
  broken = []
  for target in _LINK.findall(text):
    if "://" in target or target.startswith("mailto:"):
      continue
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    if not resolved.exists():
      broken.append(f"{target} (no file {resolved})")
    elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
      broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
  assert not broken, f"{page.name}: {broken}"


def test_every_page_is_in_the_site_nav_and_the_readme():
  nav = (REPO / "mkdocs.yml").read_text()
  readme = (REPO / "README.md").read_text()
  pages = [p.relative_to(REPO / "docs").as_posix() for p in PAGES[1:]]
  missing = [p for p in pages if f" {p}" not in nav]
  assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"
  missing = [p for p in pages if not p.startswith("api/") and f"(docs/{p})" not in readme]
  assert not missing, f"pages missing from the README's Documentation list: {missing}"


def test_anchor_ids_follow_markdown_toc():
  page = REPO / "docs" / "derivation.md"
  assert "lower-variance-time-sampling-measured" in _anchors(page)  # "..., measured"


def test_every_public_name_has_a_docstring():
  griffe = pytest.importorskip("griffe", reason="the docs extra (in the lock) brings griffe")
  package = griffe.load("vdm_jax", search_paths=[str(REPO)], resolve_aliases=True)

  def modules(module):
    for member in module.members.values():
      if not member.is_alias and member.is_module and not member.name.startswith("_"):
        yield member
        yield from modules(member)

  missing, checked = [], 0
  for module in [package, *modules(package)]:
    for name in module.exports or ():
      name = name if isinstance(name, str) else name.name
      obj = module[name]
      obj = obj.final_target if obj.is_alias else obj
      checked += 1
      if not (obj.docstring and obj.docstring.value.strip()):
        missing.append(f"{module.path}.{name} ({obj.relative_filepath}:{obj.lineno})")
  assert checked > 200, checked  # the walk reached the subpackages
  assert not missing, "public names without a docstring:\n" + "\n".join(missing)


def test_doctests_are_fenced_for_the_site():
  sys.path.insert(0, str(REPO / "docs"))
  try:
    hooks = pytest.importorskip("hooks", reason="the docs extra brings mkdocs")
  finally:
    sys.path.pop(0)
  text = "Example:\n  >>> x = 1\n  >>> x + 1\n  2\n\n  After.\n>>> 3\n3"
  assert hooks.fence_doctests(text) == (
    "Example:\n  ```pycon\n  >>> x = 1\n  >>> x + 1\n  2\n  ```\n\n  After.\n"
    "```pycon\n>>> 3\n3\n```"
  )


@pytest.mark.slow
def test_site_builds(tmp_path):
  """`bash scripts/docs.sh` (strict: a warning fails) with this interpreter; the API pages
  hold the functions, their maths as MathML and their examples as code."""
  env = os.environ | {"PYTHON_DOCS": sys.executable}
  site = tmp_path / "site"
  subprocess.run(
    ["bash", "scripts/docs.sh", "--site-dir", str(site)], cwd=REPO, env=env, check=True
  )
  elbo = (site / "api" / "elbo.html").read_text()
  assert "reconstruction_loss" in elbo and "<math" in elbo and "arithmatex" not in elbo
  assert "&gt;&gt;&gt;" in elbo and "<blockquote>" not in elbo
  index = (site / "index.html").read_text()
  assert "Two commands" in index and 'href="running.html#the-demo"' in index
