"""Sphinx configuration of radlvlm's documentation site (MyST Markdown, furo). Build: see docs/index.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import radlvlm

project = "radlvlm"
author = "radlvlm developers"
release = radlvlm.__version__
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "radlvlm_docs"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "radlvlm"
myst_enable_extensions = ["colon_fence", "deflist"]
# "#some-heading" links inside and across pages resolve to headings up to this depth (a broken one fails the build).
myst_heading_anchors = 4
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
