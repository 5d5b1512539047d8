"""LangChain's standard ``BaseStore`` tests on both LangChain stores, sync and async."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import BaseStoreAsyncTests, BaseStoreSyncTests

from commander_os.integrations.langchain import CommanderByteStore, CommanderJSONStore


class TestByteStoreSync(BaseStoreSyncTests[bytes]):
    @pytest.fixture
    def kv_store(self, tmp_path: Path) -> Iterator[CommanderByteStore]:
        with CommanderByteStore.open("lc-bytes", tmp_path, enable_htpc=False) as store:
            yield store

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return b"foo", b"\x00bar\xff", b"buzz"


class TestByteStoreAsync(BaseStoreAsyncTests[bytes]):
    @pytest.fixture
    async def kv_store(self, tmp_path: Path) -> Any:
        with CommanderByteStore.open("lc-bytes", tmp_path, enable_htpc=False) as store:
            yield store

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return b"foo", b"\x00bar\xff", b"buzz"


class TestJSONStoreSync(BaseStoreSyncTests[Any]):
    @pytest.fixture
    def kv_store(self, tmp_path: Path) -> Iterator[CommanderJSONStore]:
        with CommanderJSONStore.open("lc-json", tmp_path, enable_htpc=False) as store:
            yield store

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return {"foo": [1, 2.5, None]}, "bar", [True, {"buzz": "é"}]


class TestJSONStoreAsync(BaseStoreAsyncTests[Any]):
    @pytest.fixture
    async def kv_store(self, tmp_path: Path) -> Any:
        with CommanderJSONStore.open("lc-json", tmp_path, enable_htpc=False) as store:
            yield store

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return {"foo": [1, 2.5, None]}, "bar", [True, {"buzz": "é"}]
