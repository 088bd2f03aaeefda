"""The REST + WebSocket API service."""
