"""Deployables: each module runs as its own process (or Serve application)."""
