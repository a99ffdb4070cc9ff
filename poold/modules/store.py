"""Modules stored by their sha256: uploading the same bytes twice stores one copy.

An upload streams to a temporary file while it is hashed and measured; it is
validated (header, sections, the runtime's full validation) before it is
renamed into place, so the store never holds a module that could not run.
After a new upload the module is compiled into the shared cache in the
background (:mod:`poold.modules.compiler`: another process, fair across
tenants), so the first job does not pay for compilation. A module over a
structural limit (:mod:`poold.modules.structure`) is refused before that.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
import wasmtime

from poold.atomic import commit
from poold.modules.compiler import Precompiler, uncompilable_marker
from poold.modules.structure import StructureLimits, check_structure
from poold.runtime.engine import make_engine
from poold.runtime.inspect import ModuleRejected, check_header, inspect_module
from poold.timestamps import parse_rfc3339, rfc3339, utcnow
from poold.types import ModuleHash

log = structlog.get_logger(__name__)


class TooLarge(ModuleRejected):
    pass


@dataclass(frozen=True)
class StoredModule:
    sha256: ModuleHash
    size: int
    created: bool


@dataclass(frozen=True)
class OwnedModule:
    """A module as one tenant sees it (``GET /v1/modules``)."""

    sha256: ModuleHash
    size: int
    uploaded_at: datetime


class ModuleStore:
    def __init__(self, root: Path, *, precompiler: Precompiler | None, max_bytes: int,
                 structure: StructureLimits) -> None:
        self.root = root
        self.precompiler = precompiler
        self.max_bytes = max_bytes
        self.structure = structure
        self._validator = make_engine(fuel=False)
        self._sizes: dict[ModuleHash, int] = {}
        self._owners: dict[ModuleHash, dict[str, datetime]] = {}
        root.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        if self.precompiler is not None:
            await self.precompiler.start()

    async def stop(self) -> None:
        if self.precompiler is not None:
            await self.precompiler.stop()

    def path(self, sha256: ModuleHash) -> Path:
        return self.root / f"{sha256}.wasm"

    def compile_problem(self, sha256: str, *, fuel: bool = False) -> str | None:
        """Why the module could not be compiled within this server's limits (in the
        plain or the fuel-metered engine flavour), if so."""
        try:
            return uncompilable_marker(self.path(ModuleHash(sha256)), fuel=fuel).read_text()
        except FileNotFoundError:
            return None

    def owners(self, sha256: ModuleHash) -> dict[str, datetime]:
        """Tenants that uploaded this module, with when each first did. Modules
        are stored once, but each tenant sees only what it uploaded itself:
        otherwise a hash would tell one tenant what another runs.

        ``<sha>.owners`` has a line ``tenant<TAB>RFC 3339 time`` per tenant (a
        line without a time, from before times were kept, counts as uploaded
        when the module's file was written)."""
        found = self._owners.get(sha256)
        if found is None:
            found = {}
            try:
                text = self.path(sha256).with_suffix(".owners").read_text()
            except FileNotFoundError:
                text = ""
            for line in text.splitlines():
                tenant, _, when = line.strip().partition("\t")
                if tenant and tenant not in found:
                    found[tenant] = self._parse_time(sha256, when)
            self._owners[sha256] = found
        return found

    def _parse_time(self, sha256: ModuleHash, when: str) -> datetime:
        try:
            return parse_rfc3339(when)
        except ValueError:
            try:
                return datetime.fromtimestamp(self.path(sha256).stat().st_mtime, UTC)
            except FileNotFoundError:
                return datetime.fromtimestamp(0, UTC)

    def _add_owner(self, sha256: ModuleHash, tenant: str) -> bool:
        owners = self.owners(sha256)
        if tenant in owners:
            return False
        now = utcnow()
        with open(self.path(sha256).with_suffix(".owners"), "a") as f:
            f.write(f"{tenant}\t{rfc3339(now)}\n")
        owners[tenant] = now
        return True

    def owned(self, tenant: str) -> list[OwnedModule]:
        """The modules this tenant uploaded, newest upload first; never another
        tenant's. One directory scan, so it costs a little per stored module."""
        found: list[OwnedModule] = []
        for entry in os.scandir(self.root):
            name = entry.name
            if not name.endswith(".owners") or len(name) != 64 + len(".owners"):
                continue
            sha = ModuleHash(name[:64])
            uploaded = self.owners(sha).get(tenant)
            if uploaded is None:
                continue
            size = self.size(sha, tenant=tenant)
            if size is not None:
                found.append(OwnedModule(sha256=sha, size=size, uploaded_at=uploaded))
        found.sort(key=lambda m: (m.uploaded_at, m.sha256), reverse=True)
        return found

    def size(self, sha256: str, *, tenant: str) -> int | None:
        """The module's size if this tenant uploaded it, else None."""
        key = ModuleHash(sha256)
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            return None
        if tenant not in self.owners(key):
            return None
        if key in self._sizes:
            return self._sizes[key]
        try:
            size = self.path(key).stat().st_size
        except FileNotFoundError:
            return None
        self._sizes[key] = size
        return size

    async def put(self, chunks: AsyncIterator[bytes], *, tenant: str) -> StoredModule:
        tmp = self.root / f".upload-{secrets.token_hex(8)}.tmp"
        digest = hashlib.sha256()
        size = 0
        head = b""
        try:
            with open(tmp, "wb") as f:  # noqa: ASYNC230 - local disk, small writes
                async for chunk in chunks:
                    if len(head) < 8:
                        head += chunk[: 8 - len(head)]
                        if len(head) >= 8:
                            check_header(head)
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise TooLarge(
                            f"the module is larger than the upload limit of "
                            f"{self.max_bytes // (1024 * 1024)} MiB (server.max_upload_mb)",
                            reason="too_large",
                        )
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if size == 0:
                raise ModuleRejected(
                    "the request body is empty; send the .wasm file as the body",
                    reason="empty",
                )
            check_header(head)
            sha = ModuleHash(digest.hexdigest())
            final = self.path(sha)
            # validated even when the bytes are stored already: the store also holds
            # the operator's runtimes (reactors importing host.call), which no tenant
            # may upload as its own module
            await asyncio.get_running_loop().run_in_executor(None, self._validate, tmp)
            if final.exists():
                marker = uncompilable_marker(final)
                if (self.precompiler is not None and marker.exists()
                        and sha not in self.precompiler.pinned):
                    # uploading it again retries (a runtime's compile keeps its own caps:
                    # a restart retries that one)
                    marker.unlink(missing_ok=True)
                    self.precompiler.submit(tenant=tenant, sha256=sha, path=final)
                return StoredModule(sha, size, created=self._add_owner(sha, tenant))
            commit(tmp, final)
            self._sizes[sha] = size
            self._add_owner(sha, tenant)
        finally:
            tmp.unlink(missing_ok=True)
        if self.precompiler is not None:
            self.precompiler.submit(tenant=tenant, sha256=sha, path=final)
        return StoredModule(sha, size, created=True)

    def _validate(self, path: Path) -> None:
        data = path.read_bytes()
        info = inspect_module(data)
        check_structure(data, self.structure)
        try:
            wasmtime.Module.validate(self._validator, data)
        except wasmtime.WasmtimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
            raise ModuleRejected(
                f"the module is not valid WebAssembly: {first}", reason="invalid"
            ) from e
        if "_start" not in info.exports:
            raise ModuleRejected(
                "the module exports no _start function; poold runs WASI commands "
                "(a program with a main), not libraries (reactors)",
                reason="no_start",
            )
