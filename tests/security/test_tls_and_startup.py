"""Real relay processes on 127.0.0.1: TLS with trustme certificates, safe start-up defaults,
the CLI and the relay agreeing on the secret, and the seed's Quick Start with a token added.

Every TLS failure fails closed: the client gets RelayUnavailable, the relay acknowledges
nothing, and the agent's queue keeps the write.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from commander_os.config import RelayConfig, load_storage_config
from commander_os.errors import ConfigError, RelayAuthError, RelayUnavailable
from commander_os.relay._process import RelayProcess
from commander_os.relay._server import check_startable
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage.agent_storage import AgentStorage

WAIT = 15.0


def cli(*args: str) -> str:
    """Run ``commander-os ARGS`` and return its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, "-m", "commander_os", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def write_config(path: Path, *lines: str) -> Path:
    path.write_text("relay:\n" + "".join(f"  {line}\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for "localhost" only, and an unrelated CA."""
    folder = tmp_path_factory.mktemp("tls")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "other_ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other_ca.cert_pem.write_to_path(str(paths["other_ca"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    paths["key"].chmod(0o600)  # the relay warns about a key others can read
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(paths["cert"]), append=True)
    return paths


@pytest.fixture(scope="module")
def tls_relay(
    tmp_path_factory: pytest.TempPathFactory, certificates: dict[str, Path]
) -> Iterator[RelayProcess]:
    folder = tmp_path_factory.mktemp("tls-relay")
    config = write_config(
        folder / "relay.yaml",
        "auth: true",
        "tls:",
        f"  certfile: {certificates['cert']}",
        f"  keyfile: {certificates['key']}",
    )
    relay = RelayProcess(data_dir=folder / "data", config=config)
    relay.start()
    yield relay
    relay.stop()


def https_url(relay: RelayProcess, host: str = "localhost") -> str:
    return f"https://{host}:{relay.port}"


def admin_client(relay: RelayProcess, ca: Path) -> RelayClient:
    token = cli("token", "create", "ops", "--admin", "--data-dir", str(relay.data_dir))
    return RelayClient(https_url(relay), token=token, verify=ca)


def test_tls_round_trip_agent_relay_query(
    tls_relay: RelayProcess, certificates: dict[str, Path], tmp_path: Path
) -> None:
    assert tls_relay.url.startswith("https://127.0.0.1:")
    assert not any("warning" in line for line in tls_relay.output)
    token = cli("token", "create", "tls-agent", "--data-dir", str(tls_relay.data_dir))
    storage = AgentStorage(
        "tls-agent",
        tmp_path / "tls-agent",
        htpc_url=https_url(tls_relay),
        enable_htpc=True,
        htpc_token=token,
        htpc_ca_file=certificates["ca"],
    )
    try:
        storage.set("config", {"setting": "over TLS"})
        assert storage.wait_for_sync(WAIT)
    finally:
        storage.close()
    with admin_client(tls_relay, certificates["ca"]) as client:
        records = client.query(agent_id="tls-agent")["records"]
    assert [(r["key"], r["data"]["value"]) for r in records] == [
        ("config", {"setting": "over TLS"})
    ]


@pytest.mark.parametrize(
    ("case", "url_of", "ca"),
    [
        ("plain HTTP to a TLS relay", lambda r: f"http://127.0.0.1:{r.port}", "ca"),
        ("a CA that did not sign the certificate", https_url, "other_ca"),
        ("a host name the certificate does not name", lambda r: https_url(r, "127.0.0.1"), "ca"),
    ],
)
def test_tls_failures_fail_closed(
    tls_relay: RelayProcess,
    certificates: dict[str, Path],
    tmp_path: Path,
    case: str,
    url_of: object,
    ca: str,
) -> None:
    assert callable(url_of)
    url = url_of(tls_relay)
    agent = f"closed-{ca.replace('_', '-')}-{len(url)}"
    token = cli("token", "create", agent, "--data-dir", str(tls_relay.data_dir))
    record = {
        "agent_id": agent,
        "table": "kv",
        "key": "k",
        "op": "upsert",
        "data": {"v": 1},
        "version": 1,
        "ts": "2026-01-01T00:00:00Z",
    }
    with (
        RelayClient(url, token=token, verify=certificates[ca], timeout=5) as client,
        pytest.raises(RelayUnavailable),
    ):
        client.push(agent, [record])
    storage = AgentStorage(
        agent,
        tmp_path / agent,
        htpc_url=url,
        enable_htpc=True,
        htpc_token=token,
        htpc_ca_file=certificates[ca],
        request_timeout=5,
        close_timeout=0,  # the change stays queued: nothing for close() to wait for
    )
    try:
        storage.set("k", {"v": 2})
        with pytest.raises(RelayUnavailable):
            asyncio.run(storage.process_sync_queue())
        assert not storage.wait_for_sync(1.0)
        assert storage.get_sync_queue_size() == 1
    finally:
        storage.close()
    with admin_client(tls_relay, certificates["ca"]) as client:
        assert client.query(agent_id=agent)["records"] == []
    print(f"\n{case}: refused, queue kept 1 change, relay holds 0 records")


def test_relay_refuses_a_public_address_without_auth_and_says_how_to_fix_it() -> None:
    with pytest.raises(ConfigError, match=r"non-loopback.*auth: true.*token create"):
        check_startable(RelayConfig(host="0.0.0.0"))
    warnings = check_startable(RelayConfig(host="0.0.0.0", auth=True))
    assert any("tls" in w for w in warnings)
    assert any("auth is off" in w for w in check_startable(RelayConfig()))
    assert check_startable(RelayConfig(auth=True)) == []


def test_missing_tls_files_are_a_config_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "relay.yaml",
        "tls:",
        f"  certfile: {tmp_path / 'missing.pem'}",
        f"  keyfile: {tmp_path / 'missing.key'}",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "commander_os.network.relay",
            "--config",
            str(config),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "tls.certfile" in done.stderr


def test_auth_off_on_loopback_starts_with_a_warning(tmp_path: Path) -> None:
    with RelayProcess(data_dir=tmp_path / "relay") as relay:
        assert any("relay.auth is off" in line for line in relay.output)


def test_quick_start_with_a_token_cli_and_relay_share_the_secret(tmp_path: Path) -> None:
    """The seed's Quick Start against a relay with auth on, a token from the CLI added."""
    config = write_config(tmp_path / "relay.yaml", "auth: true")
    with RelayProcess(data_dir=tmp_path / "relay", config=config) as relay:
        secret = tmp_path / "relay" / "relay.secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        token = cli(
            "token",
            "create",
            "my-agent",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "relay"),
        )

        async def quick_start() -> dict:
            storage = AgentStorage(
                agent_id="my-agent",
                data_dir=Path(tmp_path / "data" / "agents" / "my-agent"),
                htpc_url=relay.url,
                enable_htpc=True,
                htpc_token=token,
            )
            storage.set("config", {"setting": "value"})
            config = storage.get("config")
            assert config == {"setting": "value"}
            assert storage.wait_for_sync(WAIT)
            health = storage.health_check()
            await storage.close()
            return health

        health = asyncio.run(quick_start())
        assert health["sync_queue_size"] == 0
        reader = cli("token", "create", "reader", "--data-dir", str(tmp_path / "relay"))
        with RelayClient(relay.url, token=reader) as client:
            (record,) = client.query(agent_id="my-agent")["records"]
        assert record["data"]["value"] == {"setting": "value"}
        with RelayClient(relay.url) as anonymous, pytest.raises(RelayAuthError):
            anonymous.query()
        assert not any(token in line for line in relay.output)


def test_agent_token_from_the_environment_and_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "relay.yaml", "auth: true")
    with RelayProcess(data_dir=tmp_path / "relay", config=config) as relay:
        token_a = cli("token", "create", "env-agent", "--data-dir", str(tmp_path / "relay"))
        token_b = cli("token", "create", "file-agent", "--data-dir", str(tmp_path / "relay"))
        (tmp_path / "file-agent.token").write_text(token_b + "\n")
        (tmp_path / "file-agent.token").chmod(0o600)
        storage_yaml = tmp_path / "storage_config.yaml"
        storage_yaml.write_text(
            f"agent_storage:\n  local_data_dir: {tmp_path / 'agents'}\n  htpc_url: {relay.url}\n"
        )
        monkeypatch.setenv("COMMANDER_OS_HTPC_TOKEN", token_a)
        assert load_storage_config(storage_yaml).htpc_token == token_a
        from_env = AgentStorage.from_config("env-agent", storage_yaml)
        monkeypatch.delenv("COMMANDER_OS_HTPC_TOKEN")
        from_file = AgentStorage(
            "file-agent",
            tmp_path / "agents" / "file-agent",
            htpc_url=relay.url,
            enable_htpc=True,
            token_file=tmp_path / "file-agent.token",
        )
        try:
            for store in (from_env, from_file):
                store.set("k", {"who": store.agent_id})
            deadline = time.monotonic() + WAIT
            assert from_env.wait_for_sync(max(0.1, deadline - time.monotonic()))
            assert from_file.wait_for_sync(max(0.1, deadline - time.monotonic()))
        finally:
            from_env.close()
            from_file.close()
