"""Fault injection on the real services: reuse the end-to-end stack fixtures."""

from tests.e2e.conftest import api_url, service_env, stack, start_service  # noqa: F401
