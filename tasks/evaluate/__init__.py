"""Offline evaluation: quality metrics and the promotion decision."""
