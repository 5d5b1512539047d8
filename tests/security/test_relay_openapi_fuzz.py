"""schemathesis against the relay's OpenAPI spec, in process, with auth on.

Positive and negative data for every operation, with schemathesis' checks (among them
``not_a_server_error`` and ``ignored_auth``: the relay must refuse a request whose token is
missing or wrong). The number of examples is bounded so the run stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance
from security_helpers import SECRET, TEST_LIMITS, token

from commander_os.config import RelayConfig
from commander_os.relay import create_app

_ADMIN = token("fuzz-agent", admin=True)
#: Invalid data may also be refused as too large (413): a made-up body past the relay's limit.
_REJECTIONS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
_CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": _REJECTIONS}}}
)
#: Examples per operation and mode: 8 operations x 2 modes x this stays well under a minute.
EXAMPLES = 40


@pytest.fixture(scope="module")
def relay_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data = Path(tmp_path_factory.mktemp("fuzz-relay"))
    # schemathesis calls the app as "testserver".
    config = RelayConfig(
        agent_storage_dir=data,
        auth=True,
        secret=SECRET,
        limits=TEST_LIMITS,
        allowed_hosts=["testserver"],
    )
    app = create_app(config)
    yield app
    # schemathesis runs the app's lifespan (which opens the store); end it, closing the store.
    schemathesis_asgi.shutdown_lifespans()


class _AdminToken:
    """Hands schemathesis a valid admin token, marked as explicit auth so that its
    ``ignored_auth`` check replays each request without it and with a made-up one."""

    def get(self, case: Any, context: Any) -> str:
        return _ADMIN

    def set(self, case: Any, data: str, context: Any) -> None:
        # Spelled as the spec's security scheme names it: schemathesis removes it by that name.
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def relay_schema(relay_app: Any) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", relay_app, config=_CONFIG)
    schema.auth()(_AdminToken)
    return schema


# Driven by hand rather than through schemathesis.pytest.from_fixture, whose lazy loader reads
# a pytest node attribute that pytest 9 no longer has (AttributeError: '_nodeid').
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_relay_api_never_errors_and_never_ignores_auth(
    relay_schema: Any, mode: GenerationMode
) -> None:
    failures: list[str] = []
    server_errors = calls = 0
    unsatisfiable: list[str] = []
    for result in relay_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode, auth_storage=relay_schema.auth))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            nonlocal server_errors, calls
            wait = (case.query or {}).get("wait")
            if isinstance(wait, int | float) and not isinstance(wait, bool):
                case.query["wait"] = min(wait, 0.05)  # long-polls would only cost time
            response = case.call()
            calls += 1
            server_errors += response.status_code >= 500
            try:
                case.validate_response(response, excluded_checks=[positive_data_acceptance])
            except Exception as exc:  # schemathesis' failed checks, as one group
                failures.append(f"{case.method} {case.path}: {str(exc)[:1500]}")

        try:
            run()
        except Unsatisfiable:  # e.g. no negative data for an operation without parameters
            unsatisfiable.append(operation.label)
    print(
        f"\nschemathesis ({mode.value}): {calls} calls, server errors: {server_errors}, "
        f"failed checks: {len(failures)}; nothing to generate for: {unsatisfiable or 'none'}"
    )
    assert failures == []
    assert server_errors == 0
