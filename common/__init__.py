"""Code the worker and the metrics exporter share (they import nothing of each other)."""
