"""Leaf helpers every layer may use: logging set-up, device choice, process-group helpers."""
