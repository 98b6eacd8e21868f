"""docs/api.md: every example on the page runs and prints what it says."""

import doctest
import pathlib

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_api_page_examples():
  result = doctest.testfile(
      str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS |
      doctest.NORMALIZE_WHITESPACE, raise_on_error=False, verbose=False)
  assert result.attempted > 20
  assert result.failed == 0, f"{result.failed} example(s) of {DOC} failed"
