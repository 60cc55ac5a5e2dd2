"""The documentation stays consistent with the code it describes.

* Every citation `ALGORITHM.md §N` (or `ALGORITHM §N`) in the package, the
  configs and docs/ names a section heading of docs/ALGORITHM.md
  (`## §N. Title` or `### §Na. Title`).
* docs/DESIGN.md's module map names every module under ilct_jax/ by its full
  path (`ilct_jax/data/latents.py`), and every such path exists.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ilct_jax"
ALGORITHM = ROOT / "docs" / "ALGORITHM.md"
DESIGN = ROOT / "docs" / "DESIGN.md"

# Files whose citations are checked (globs relative to the repository root).
CITING_GLOBS = ("ilct_jax/**/*.py", "configs/*.py", "docs/*.md")
# A grep for the citation form would otherwise pass on an empty tree.
MIN_CITATIONS = 20

# `## §6. Title` and `### §11b. Title`.
HEADING = re.compile(r"^#{2,3} §(\d+[a-z]?)\.\s", re.MULTILINE)
# `ALGORITHM.md §6` or `ALGORITHM §11b`, possibly wrapped onto the next line
# of a docstring or `#` comment, optionally followed by more sections that
# each carry their own `§`: `ALGORITHM.md §6-§8`, `ALGORITHM §13, §18`,
# `ALGORITHM.md §14 and §15`. A trailing `.5` (`§17.5`, an item of §17)
# cites §17. Only the `§` form is recognised.
CITATION = re.compile(
  r"\bALGORITHM(?:\.md)?[\s#]+"
  r"(§\d+[a-z]?(?:\s*(?:,|and|-|–|/)\s*§\d+[a-z]?)*)"
)
SECTION = re.compile(r"§(\d+[a-z]?)")
# A full path to a python module of the package: `ilct_jax/models/unet.py`.
MODULE_PATH = re.compile(r"(?<![\w./-])ilct_jax/(?:\w+/)*\w+\.py\b")


def _line_of(text: str, offset: int) -> int:
  return text.count("\n", 0, offset) + 1


def _rel(path: pathlib.Path) -> str:
  return path.relative_to(ROOT).as_posix()


def algorithm_sections() -> set[str]:
  """Section ids ("0", ..., "11a", ...) of the headings of ALGORITHM.md."""
  return set(HEADING.findall(ALGORITHM.read_text(encoding="utf-8")))


def citing_files() -> list[pathlib.Path]:
  files = set()
  for pattern in CITING_GLOBS:
    files.update(p for p in ROOT.glob(pattern) if p.is_file())
  return sorted(files)


def citations() -> list[tuple[str, int, str]]:
  """(file, line, section id) of every `ALGORITHM[.md] §N` citation."""
  found = []
  for path in citing_files():
    text = path.read_text(encoding="utf-8")
    for match in CITATION.finditer(text):
      for sec in SECTION.finditer(match.group(1)):
        offset = match.start(1) + sec.start()
        found.append((_rel(path), _line_of(text, offset), sec.group(1)))
  return found


def test_algorithm_has_every_numbered_section():
  text = ALGORITHM.read_text(encoding="utf-8")
  ids = HEADING.findall(text)
  expected = [str(n) for n in range(20)] + ["11a", "11b", "11c"]
  duplicates = sorted({i for i in ids if ids.count(i) > 1})
  missing = [i for i in expected if i not in ids]
  extra = sorted(set(ids) - set(expected))
  assert not (duplicates or missing or extra), (
    f"docs/ALGORITHM.md headings: duplicated {duplicates}, missing "
    f"{missing}, unexpected {extra}; code cites these numbers, so keep "
    "§0..§19 and §11a-§11c, each once"
  )


def test_algorithm_citations_name_existing_sections():
  sections = algorithm_sections()
  found = citations()
  dangling = [
    f"{path}:{line}: ALGORITHM.md §{sec}"
    for path, line, sec in found
    if sec not in sections
  ]
  assert not dangling, (
    f"{len(dangling)} citation(s) name no heading of docs/ALGORITHM.md "
    f"(headings: {', '.join(sorted(sections, key=_section_key))}):\n"
    + "\n".join(dangling)
  )
  assert len(found) >= MIN_CITATIONS, (
    f"found only {len(found)} `ALGORITHM.md §N` citations in "
    f"{', '.join(CITING_GLOBS)} (expected at least {MIN_CITATIONS}); cite "
    "the algorithm as `ALGORITHM.md §N`, not `ALGORITHM N` or `section N`"
  )


def _section_key(sec: str) -> tuple[int, str]:
  digits = re.match(r"\d+", sec).group(0)
  return int(digits), sec[len(digits) :]


def test_design_module_map_matches_tree():
  if not DESIGN.is_file():
    pytest.fail(
      "docs/DESIGN.md does not exist: write it with a module map that "
      "lists every module under ilct_jax/ by its full path "
      "(e.g. ilct_jax/data/latents.py)"
    )
  text = DESIGN.read_text(encoding="utf-8")
  mentioned: dict[str, int] = {}
  for match in MODULE_PATH.finditer(text):
    mentioned.setdefault(match.group(0), _line_of(text, match.start()))
  stale = [
    f"docs/DESIGN.md:{line}: {path} does not exist"
    for path, line in sorted(mentioned.items())
    if not (ROOT / path).is_file()
  ]
  modules = sorted(
    _rel(p)
    for p in PACKAGE.rglob("*.py")
    if p.name != "__init__.py" and "__pycache__" not in p.parts
  )
  unlisted = [
    f"{path} is not mentioned in docs/DESIGN.md"
    for path in modules
    if path not in mentioned
  ]
  assert not (stale or unlisted), (
    "docs/DESIGN.md's module map does not match the tree:\n"
    + "\n".join(stale + unlisted)
  )
