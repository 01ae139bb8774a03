"""Scheduling: next-run computation, retention (GFS), prune."""
