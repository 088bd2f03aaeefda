"""Moved to :mod:`switchyard.cli`; re-exported so ``python -m shared.cli`` keeps working."""

from __future__ import annotations

from switchyard.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
