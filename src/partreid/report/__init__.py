"""Run reports: ranked-list pictures, activation figures, the HTML page. Knows no engine."""

from .html import write_html
from .ranked_list import draw_ranked_lists

__all__ = ["draw_ranked_lists", "write_html"]
