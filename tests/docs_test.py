"""The documentation stays consistent with the code it describes.

* Every citation `ALGORITHM.md §N` (or `ALGORITHM §N`) in the package, the
  configs and docs/ names a section heading of docs/ALGORITHM.md
  (`## §N. Title` or `### §Na. Title`).
* docs/DESIGN.md's module map names every module under ilct_jax/ by its full
  path (`ilct_jax/data/latents.py`), and every such path exists.
* Every `python -m ilct_jax...` command in README.md and docs/ names an
  existing module and only flags it defines, and each `--config.a.b` names a
  real field; every `ilct_jax.x.y` and `tests/x.py` named exists; a default
  quoted next to its field equals configs/default.py's.
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
  expected = [str(n) for n in range(22)] + ["11a", "11b", "11c"]
  duplicates = sorted({i for i in ids if ids.count(i) > 1})
  missing = [i for i in expected if i not in ids]
  extra = sorted(set(ids) - set(expected))
  assert not (duplicates or missing or extra), (
    f"docs/ALGORITHM.md headings: duplicated {duplicates}, missing "
    f"{missing}, unexpected {extra}; code cites these numbers, so keep "
    "§0..§21 and §11a-§11c, each once"
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


# ---------------------------------------------------------------- commands
# `python -m ilct_jax.X ...` in README.md and docs/*.md, with `\` line
# continuations joined; the command ends at the end of its line (or a
# closing backtick inside running text).
COMMAND = re.compile(r"python -m (ilct_jax(?:\.\w+)+)((?:[^\n`]|\\\n)*)")
FLAG = re.compile(r"(?<![\w-])--([a-z_][\w.]*)(?:=(\S*))?")
# absl defines these itself (and `--config` is a config_flags file flag).
ABSL_FLAGS = {"helpfull", "help", "alsologtostderr", "logtostderr", "v"}
DEFINED = re.compile(
  r"""(?:DEFINE_\w+|DEFINE_config_file)\(\s*["'](\w+)["']"""
  r"""|add_argument\(\s*["']--([\w-]+)["']"""
)
DOC_FILES = ("README.md", "docs/*.md")


def _doc_texts() -> list[tuple[str, str]]:
  files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
  return [(_rel(p), p.read_text(encoding="utf-8")) for p in files]


def doc_commands() -> list[tuple[str, int, str, str]]:
  """(file, line, module, arguments) of every documented command."""
  out = []
  for name, text in _doc_texts():
    for m in COMMAND.finditer(text):
      args = m.group(2).replace("\\\n", " ")
      out.append((name, _line_of(text, m.start()), m.group(1), args))
  return out


def _module_file(module: str) -> pathlib.Path:
  """The module's file; for a command module that runs another by name
  (`runpy.run_module`), that one's."""
  path = ROOT / (module.replace(".", "/") + ".py")
  if not path.is_file():
    return path
  target = re.search(r'run_module\(\s*"([\w.]+)"', path.read_text())
  return _module_file(target.group(1)) if target else path


def _flags_of(module: str) -> set[str]:
  """Flag names a module's command line defines: its own DEFINE_* and
  add_argument calls and those of the ilct_jax modules whose flag-defining
  functions it calls (`parallel.define_cluster_flags`, ...)."""
  source = _module_file(module).read_text(encoding="utf-8")
  names = {a or b.replace("-", "_") for a, b in DEFINED.findall(source)}
  for helper in re.findall(r"(\w+)\.define_\w+\(", source):
    for path in PACKAGE.rglob(f"{helper.removesuffix('_lib')}.py"):
      text = path.read_text(encoding="utf-8")
      names |= {a or b.replace("-", "_") for a, b in DEFINED.findall(text)}
  return names | ABSL_FLAGS


def _config_of(args: str):
  """The config a command uses: its --config file, else the run's default."""
  import importlib

  from ilct_jax.lab import run_files

  m = re.search(r"--config=(\S+\.py)", args)
  if m and "$" not in m.group(1) and (ROOT / m.group(1)).is_file():
    return run_files.load_config_file(str(ROOT / m.group(1)))
  return importlib.import_module("configs.default").get_config()


def test_documented_commands_parse():
  """Each documented `python -m ilct_jax...` names an existing module and
  only flags it defines; each `--config.a.b` names a real config field."""
  commands = doc_commands()
  assert len(commands) >= 30, len(commands)
  bad = []
  for where, line, module, args in commands:
    if not _module_file(module).is_file():
      bad.append(f"{where}:{line}: no module {module}")
      continue
    known = _flags_of(module)
    config = None
    for flag, _ in FLAG.findall(args):
      if flag.startswith("config."):
        config = _config_of(args) if config is None else config
        node = config
        for part in flag.split(".")[1:]:
          if not hasattr(node, "keys") or part not in node:
            bad.append(f"{where}:{line}: {module}: no config field {flag}")
            break
          node = node[part]
      elif flag not in known and flag.replace("no", "", 1) not in known:
        bad.append(f"{where}:{line}: {module} has no flag --{flag}")
  assert not bad, "\n".join(bad)


# `ilct_jax.a.b` (a module, or an attribute of one) and `tests/x_test.py`.
DOTTED = re.compile(r"`(ilct_jax(?:\.\w+)+)")
TEST_FILE = re.compile(r"\btests/\w+\.py\b")


def test_named_modules_and_test_files_exist():
  import importlib
  import importlib.util

  bad = []
  for where, text in _doc_texts():
    for m in DOTTED.finditer(text):
      parts, line = m.group(1).split("."), _line_of(text, m.start())
      # The longest prefix that is a module; the rest are its attributes.
      for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        if (
          _module_file(name).is_file()
          or (ROOT / name.replace(".", "/") / "__init__.py").is_file()
        ):
          break
      else:
        bad.append(f"{where}:{line}: no module {m.group(1)}")
        continue
      if k < len(parts):
        obj = importlib.import_module(name)
        for attr in parts[k:]:
          if not hasattr(obj, attr):
            bad.append(f"{where}:{line}: {name} has no {'.'.join(parts[k:])}")
            break
          obj = getattr(obj, attr)
    for m in TEST_FILE.finditer(text):
      if not (ROOT / m.group(0)).is_file():
        bad.append(f"{where}:{_line_of(text, m.start())}: no {m.group(0)}")
  assert not bad, "\n".join(bad)


# A default quoted next to its field: "`train.max_nonfinite` (100)" or
# "`coupling.iterations` = 200" (numbers and booleans; words after a field
# are prose, not values).
QUOTED_DEFAULT = re.compile(
  r"`([a-z_]+\.[a-z_]+)`\s*(?:\(|=\s*)"
  r"(-?\d[\d_,]*(?:\.\d+)?(?:e-?\d+)?|True|False)(?![\w.])"
)


def test_quoted_defaults_equal_the_code():
  from configs import default

  config = default.get_config()
  bad, seen = [], 0
  for where, text in _doc_texts():
    for m in QUOTED_DEFAULT.finditer(text):
      field, quoted = m.group(1), m.group(2)
      group, leaf = field.split(".")
      if group not in config or leaf not in config[group]:
        continue
      value = config[group][leaf]
      if isinstance(value, bool) or quoted in ("True", "False"):
        ok = quoted == str(value)
      elif isinstance(value, (int, float)):
        ok = float(quoted.replace("_", "").replace(",", "")) == float(value)
      else:
        continue
      seen += 1
      if not ok:
        line = _line_of(text, m.start())
        bad.append(f"{where}:{line}: {field} quoted {quoted}, code {value!r}")
  assert seen >= 5, seen
  assert not bad, "\n".join(bad)
