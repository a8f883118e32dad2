"""Build, cache and load the package's small C kernels (plain C, called through ctypes).

A kernel is one ``.c`` file beside this module. On first use it is compiled with the system C
compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a shared library cached under
``$CDCLIP_CACHE_DIR`` (default ``$XDG_CACHE_HOME/cdclip`` or ``~/.cache/cdclip``), named by a hash
of the source, the compiler and the flags, so an edited source or another compiler never reuses a
stale build. Writes are atomic (compile to a temporary name, then rename), so concurrent processes
and a crash mid-build never leave a broken library behind.

No Python or torch headers are involved: a build takes well under a second, needs nothing but a C
compiler, and cannot break on a torch upgrade. ctypes releases the GIL during a call, which lets
the caller split the work over threads.

``CDCLIP_NATIVE=0`` turns every native kernel off (the callers then use their torch code).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cdclip.cache_dir import CACHE_ENV, cache_dir  # CACHE_ENV: re-exported for tests

__all__ = ["CACHE_ENV", "NativeUnavailable", "cache_dir", "load", "why_unavailable"]

NATIVE_ENV = "CDCLIP_NATIVE"
# AVX2 + FMA: every x86-64 CPU since 2013 (Haswell) / 2015 (AMD Excavator), and what the kernels use
FLAGS = ("-O3", "-mavx2", "-mfma", "-fPIC", "-shared", "-std=c11")
BUILD_TIMEOUT_S = 120

_loaded: dict[str, ctypes.CDLL] = {}
_failed: dict[str, str] = {}


class NativeUnavailable(RuntimeError):
    """The native kernel cannot be used here; the message says why and what to do."""

    def __init__(self, reason: str, *, expected: bool = False) -> None:
        super().__init__(reason)
        # expected: disabled on purpose or an unsupported CPU (nothing to fix), as opposed to a
        # failed build on a machine that should be able to build it
        self.expected = expected


def why_unavailable() -> str | None:
    """Why native kernels cannot run on this machine (disabled, CPU), or ``None`` if they may."""
    if os.environ.get(NATIVE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"native kernels are disabled by {NATIVE_ENV}=0"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"the native kernels need an x86-64 CPU with AVX2 and FMA; this machine is {machine or 'unknown'}"
    capability = torch.backends.cpu.get_cpu_capability()
    if not (capability.startswith("AVX2") or capability.startswith("AVX512")):
        return f"the native kernels need a CPU with AVX2 and FMA; torch reports CPU capability {capability!r}"
    return None


def _compiler() -> list[str]:
    """The compiler command: ``$CC`` split like a shell would (``ccache gcc``, ``gcc -m64``), else the first of cc/gcc/clang."""
    env = os.environ.get("CC", "").strip()
    if env:
        words = shlex.split(env)
        path = shutil.which(words[0])
        if path:
            return [path, *words[1:]]
        raise NativeUnavailable(
            f"no C compiler found (tried $CC={env!r}: {words[0]!r} is not on PATH); install one or fix CC"
        )
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise NativeUnavailable("no C compiler found (tried cc, gcc, clang); install one (e.g. `apt install gcc`) or set CC")


def _build(source: Path, target: Path, compiler: list[str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [*compiler, *FLAGS, "-o", tmp, str(source)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise NativeUnavailable(f"building {source.name} took over {BUILD_TIMEOUT_S} s: {' '.join(cmd)}") from err
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            detail = [line for line in lines if "error" in line.lower()][:5] or lines[-5:]
            raise NativeUnavailable(f"building {source.name} failed ({' '.join(cmd)}):\n  " + "\n  ".join(detail))
        os.replace(tmp, target)  # atomic: readers see the old state or the whole new library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(name: str, source: Path | None = None) -> ctypes.CDLL:
    """Build (once, cached) and load the kernel ``<name>.c`` that sits beside this module.

    Args:
        name: the kernel's name (its file name without ``.c``); one library per name and process.
        source: another C file to build under that name (tests, experiments).

    Raises:
        NativeUnavailable: disabled, unsupported CPU, no compiler, or the build failed; the
            message says which. A failure is remembered for the rest of the process.
    """
    if name in _loaded:
        return _loaded[name]
    reason = why_unavailable()
    if reason is not None:
        raise NativeUnavailable(reason, expected=True)
    if name in _failed:
        raise NativeUnavailable(_failed[name])
    try:
        source = Path(source) if source is not None else Path(__file__).with_name(f"{name}.c")
        if not source.is_file():
            raise NativeUnavailable(f"kernel source {source} is missing from the installation")
        compiler = _compiler()
        key = hashlib.sha256(
            b"\0".join([source.read_bytes(), " ".join(compiler + list(FLAGS)).encode(), sys.platform.encode()])
        ).hexdigest()[:16]
        target = cache_dir() / "kernels" / f"{name}-{key}.so"
        if not target.is_file():
            try:
                _build(source, target, compiler)
            except OSError:
                # unwritable or read-only cache (shared home, container): build into a private
                # temporary folder instead
                target = Path(tempfile.mkdtemp(prefix="cdclip-kernels-")) / target.name
                _build(source, target, compiler)
        library = ctypes.CDLL(str(target))
    except NativeUnavailable as err:
        _failed[name] = str(err)
        raise
    except OSError as err:  # unloadable library, unwritable temporary folder ...
        _failed[name] = f"loading the {name} kernel failed: {err}"
        raise NativeUnavailable(_failed[name]) from err
    _loaded[name] = library
    return library
