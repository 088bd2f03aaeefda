"""The logger service: writes log lines and execution history in batches."""
