"""Writes setup.py's URL into the notebook's Colab badge and clone URL.

The repository's home is declared once, as `URL` in setup.py (the package
metadata's Home-page). A Colab notebook cannot read it before the repository
is cloned, so notebooks/inspect_checkpoint.ipynb carries it literally; after
changing setup.py's URL (a fork, a move), run from the repository root:

  python tools/set_repo_url.py

tests/notebook_test.py fails, naming this command, while they differ.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "inspect_checkpoint.ipynb"
_URL = re.compile(r'^URL = "(https://github\.com/[^/"]+/[^/"]+)"$', re.M)
_BADGE = re.compile(r"colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/")
_CLONE = re.compile(r'REPO_URL = \\"[^"\\]*\\"')


def declared_url() -> str:
  """setup.py's URL (https://github.com/OWNER/NAME)."""
  match = _URL.search((ROOT / "setup.py").read_text())
  if not match:
    raise SystemExit('setup.py has no line URL = "https://github.com/O/N"')
  return match.group(1)


def rewrite(text: str, url: str) -> str:
  """The notebook's JSON text with its badge and REPO_URL set to `url`."""
  path = url.removeprefix("https://github.com/")
  text = _BADGE.sub(f"colab.research.google.com/github/{path}/", text)
  return _CLONE.sub(f'REPO_URL = \\\\"{url}\\\\"', text)


def main() -> None:
  url = declared_url()
  old = NOTEBOOK.read_text()
  new = rewrite(old, url)
  NOTEBOOK.write_text(new)
  state = "changed" if new != old else "unchanged"
  print(f"{NOTEBOOK.relative_to(ROOT)}: {url} ({state})")


if __name__ == "__main__":
  main()
