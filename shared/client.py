"""Moved to :mod:`switchyard.client`; this module re-exports it so old imports keep working.

Write ``from switchyard import Client, AsyncClient, ApiError`` in new code.
"""

from __future__ import annotations

from switchyard.client import LOG_PAGE_SIZE, ApiError, AsyncClient, Client

__all__ = ["LOG_PAGE_SIZE", "ApiError", "AsyncClient", "Client"]
