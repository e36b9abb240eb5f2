"""Reporting: the console summaries, report.md and pilot.md, and the plots."""
