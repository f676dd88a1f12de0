"""Run reports: metrics.json, ranked-list pictures, activation figures, an HTML page."""
from .ranked_list import draw_ranked_lists
from .run import evaluate_run, write_run_report

__all__ = ["draw_ranked_lists", "evaluate_run", "write_run_report"]
