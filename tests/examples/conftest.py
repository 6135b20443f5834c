"""The examples run against the same real ``hfserve serve`` processes as the integration tests."""

from tests.integration.conftest import start_server

__all__ = ["start_server"]
