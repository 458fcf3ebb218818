"""Judging one organ: reconstruct, score, decide, locate defects and write its record."""
