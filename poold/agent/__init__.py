"""The agent: runs one job inside a worker."""
