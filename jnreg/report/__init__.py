"""Pages people read to judge a version, and the store at a glance: self-contained HTML from the store's documents."""

from jnreg.report.overview import write_overview
from jnreg.report.version_page import render_version, write_version_page

__all__ = ["render_version", "write_overview", "write_version_page"]
