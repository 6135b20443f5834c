"""Schemathesis against the server's own ``/openapi.json``: every operation, with a valid key.

Valid and invalid bodies are generated from the document; every response must be a non-5xx,
every 4xx must be the OpenAI error shape, and responses must match what the document declares.
The example count is bounded so the whole module stays well under a minute on two cores.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import CheckContext, positive_data_acceptance
from schemathesis.core.failures import Failure

from tests.hardening.conftest import KeyedServer, error_shape

pytestmark = pytest.mark.integration

# Per operation; positive and negative cases both come out of this budget.
MAX_EXAMPLES = 25


@pytest.fixture
def api_schema(keyed_server: KeyedServer) -> Any:
    """The live server's own OpenAPI document, loaded the way a client would."""
    return schemathesis.openapi.from_url(keyed_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schemathesis.check
def openai_error_shape(ctx: CheckContext, response: schemathesis.Response, case: Case) -> None:
    """Every 4xx carries ``{"error": {message, type, param, code}}`` and nothing else."""
    if 400 <= response.status_code < 500:
        try:
            error_shape(response.json())
        except (AssertionError, ValueError) as exc:
            raise Failure(
                operation=case.operation.label,
                title="4xx not in the OpenAI error shape",
                message=f"{response.status_code}: {response.text[:300]!r} ({exc})",
            ) from None


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation(case: Case, keyed_server: KeyedServer) -> None:
    """No 5xx, every 4xx in the OpenAI shape, status codes and content types as documented."""
    if case.body is not None and isinstance(case.body, dict) and "max_tokens" not in case.body:
        # Generated chats may ask for the whole context; a short cap keeps the run bounded.
        case.body.setdefault("max_completion_tokens", 4)
    case.call_and_validate(
        base_url=keyed_server.url,
        headers=keyed_server.headers,
        timeout=60,
        additional_checks=[openai_error_shape],
        # The document cannot say which model names are loaded, how long a prompt may be for
        # its context, or which OpenAI fields hfserve refuses (tools, logprobs...): such bodies
        # are schema-valid yet rightly 400. The shape check above still holds for them.
        excluded_checks=[positive_data_acceptance],
    )
