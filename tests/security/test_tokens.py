"""Agent tokens: round trip, tampering, expiry, constant-time comparison, the secret file."""

from __future__ import annotations

import hmac
import stat
from pathlib import Path

import pytest
from security_helpers import ANOTHER_SECRET, SECRET

from commander_os.config import RelayConfig
from commander_os.errors import ConfigError, InvalidAgentId, InvalidToken
from commander_os.relay import _auth as auth
from commander_os.relay._auth import issue_token, load_secret, parse_expiry, verify_token

KEY = SECRET.encode()
NOW = 1_764_210_000


def test_round_trip_keeps_every_claim() -> None:
    token = issue_token(
        KEY,
        "agent-a",
        read=["agent-c", "agent-b", "agent-a"],
        admin=True,
        expires_at=NOW + 60,
        now=NOW,
    )
    claims = verify_token(KEY, token, now=NOW + 1)
    assert token.startswith("cos1.")
    assert token.count(".") == 2
    assert claims.agent_id == "agent-a"
    assert claims.read == frozenset({"agent-b", "agent-c"})
    assert claims.admin is True
    assert (claims.issued_at, claims.expires_at) == (NOW, NOW + 60)
    assert claims.readable() is None  # admin reads everything
    assert len({issue_token(KEY, "agent-a", now=NOW) for _ in range(5)}) == 5  # unique ids


def test_read_acl() -> None:
    everyone = verify_token(KEY, issue_token(KEY, "agent-a"))
    some = verify_token(KEY, issue_token(KEY, "agent-a", read=["agent-b"]))
    own_only = verify_token(KEY, issue_token(KEY, "agent-a", read=[]))
    assert everyone.readable() is None
    assert everyone.can_read("zzz")
    assert some.readable() == {"agent-a", "agent-b"}
    assert not some.can_read("agent-c")
    assert own_only.readable() == {"agent-a"}


def test_changing_any_character_invalidates_the_token() -> None:
    token = issue_token(KEY, "agent-a", read=["agent-b"], expires_at=NOW + 3600, now=NOW)
    accepted = 0
    for index, char in enumerate(token):
        for replacement in {"A", "B", "-", "_", "0", ".", "a"} - {char}:
            forged = token[:index] + replacement + token[index + 1 :]
            try:
                verify_token(KEY, forged, now=NOW)
            except InvalidToken:
                continue
            accepted += 1
    for cut in (1, 2, len(token) // 2):
        with pytest.raises(InvalidToken):
            verify_token(KEY, token[:-cut], now=NOW)
    with pytest.raises(InvalidToken):
        verify_token(KEY, token + "A", now=NOW)
    print(f"\ntampered tokens accepted: {accepted} of {len(token) * 6}+")
    assert accepted == 0


def test_wrong_secret_and_garbage_are_invalid_without_echoing_the_token() -> None:
    token = issue_token(ANOTHER_SECRET.encode(), "agent-a")
    for bad in (
        token,
        "",
        "garbage",
        "a.b.c",
        "cos1..",
        "cos1.e30.",
        "x" * 100_000,
        "cos1.%%%.@@@",
    ):
        with pytest.raises(InvalidToken) as caught:
            verify_token(KEY, bad)
        if len(bad) > 8:
            assert bad not in str(caught.value)


def test_signed_but_malformed_claims_are_invalid() -> None:
    import base64

    import orjson

    for claims in (
        {"sub": "Bad Id"},
        [],
        {"sub": "a", "read": "all", "adm": False, "iat": 1, "exp": None, "jti": "x"},
    ):
        payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
        signature = hmac.new(KEY, f"cos1.{payload}".encode(), "sha256").digest()
        forged = f"cos1.{payload}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        with pytest.raises(InvalidToken, match="malformed"):
            verify_token(KEY, forged)


def test_expiry() -> None:
    token = issue_token(KEY, "agent-a", expires_at=NOW + 60, now=NOW)
    assert verify_token(KEY, token, now=NOW + 59).agent_id == "agent-a"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(KEY, token, now=NOW + 60)
    with pytest.raises(ValueError, match="future"):
        issue_token(KEY, "agent-a", expires_at=NOW - 1, now=NOW)
    assert parse_expiry("30d", now=NOW) == NOW + 30 * 86400
    assert parse_expiry("12h", now=NOW) == NOW + 12 * 3600
    assert parse_expiry("2099-01-01T00:00:00Z", now=NOW) == 4070908800
    assert parse_expiry("2099-01-01", now=NOW) == 4070908800
    for bad in ("0d", "soon", "2000-01-01", "-5d", "5y"):
        with pytest.raises(ValueError, match="expiry"):
            parse_expiry(bad, now=NOW)


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    token = issue_token(KEY, "agent-a")
    verify_token(KEY, token)
    with pytest.raises(InvalidToken):
        verify_token(ANOTHER_SECRET.encode(), token)
    assert len(calls) == 2
    assert all(len(a) == len(b) == 32 for a, b in calls)


def test_bad_agent_ids_get_no_token() -> None:
    for bad in ("Agent-A", "../etc", "a/b", "", "a" * 65, "agent-\uff41"):
        with pytest.raises(InvalidAgentId):
            issue_token(KEY, bad)
    with pytest.raises(InvalidAgentId):
        issue_token(KEY, "agent-a", read=["../x"])


def test_secret_file_is_made_once_private_and_reused(tmp_path: Path) -> None:
    config = RelayConfig(agent_storage_dir=tmp_path / "relay", auth=True)
    with pytest.raises(ConfigError, match="not found"):
        load_secret(config)
    first = load_secret(config, create=True)
    path = tmp_path / "relay" / "relay.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(config, create=True) == first == load_secret(config)
    assert len(first) >= auth.MIN_SECRET_CHARS


def test_configured_secret_wins_and_must_be_long(tmp_path: Path) -> None:
    config = RelayConfig(agent_storage_dir=tmp_path, auth=True, secret=SECRET)
    assert load_secret(config, create=True) == KEY
    assert not (tmp_path / "relay.secret").exists()
    with pytest.raises(ConfigError, match="at least"):
        load_secret(RelayConfig(agent_storage_dir=tmp_path, secret="short"))


def test_token_file_problems_are_config_errors(tmp_path: Path) -> None:
    from commander_os.config import StorageConfig, read_token

    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    empty.chmod(0o600)
    for path in (tmp_path / "missing.token", empty):
        with pytest.raises(ConfigError, match="token_file"):
            read_token(StorageConfig(token_file=path))
    (tmp_path / "ok.token").write_text("  cos1.a.b \n")
    (tmp_path / "ok.token").chmod(0o600)
    assert read_token(StorageConfig(token_file=tmp_path / "ok.token")) == "cos1.a.b"
    assert "cos1" not in repr(StorageConfig(htpc_token="cos1.a.b"))
