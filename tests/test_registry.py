"""Registry behaviour, plugin loading through a fake entry point, and import lightness."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest

import cdclip
from cdclip.registry import Registry


def test_builtins_are_registered_lazily_and_listed():
    names = cdclip.list_components()
    for name in ("js_divergence", "cda_affinity", "cda"):
        assert name in names
    assert "cda" in cdclip.list_components(kind="refiner")
    assert cdclip.get("cda") is cdclip.CDAModule


def test_create_passes_arguments():
    module = cdclip.create("cda", fusion="replace", sigma=0.1)
    assert isinstance(module, cdclip.CDAModule) and module.fusion == "replace" and module.sigma == 0.1


def test_duplicate_names_raise_unless_override():
    reg = Registry(builtin_modules=())

    class A: ...

    class B: ...

    reg.register("thing", A)
    reg.register("thing", A)  # the same object again is harmless (module re-import)
    with pytest.raises(ValueError, match="'thing' is already registered"):
        reg.register("thing", B)
    reg.register("thing", B, override=True)
    assert reg.get("thing") is B


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match=r"Did you mean 'cda'") as info:
        cdclip.create("cdaa")
    assert "Registered:" in str(info.value) and "js_divergence" in str(info.value)


def test_prefix_factories():
    reg = Registry(builtin_modules=())

    @reg.register("fake", prefix=True)
    def build(name, scale=1):
        return (name, scale)

    assert reg.create("fake:model-x@tag", scale=3) == ("model-x@tag", 3)
    with pytest.raises(KeyError, match="unknown cdclip component prefix 'nope'"):
        reg.get("nope:model")
    with pytest.raises(ValueError, match="must not contain ':'"):
        reg.register("a:b", build)


class _FakeEntryPoint:
    def __init__(self, name, target):
        self.name, self.value, self._target = name, f"fake:{name}", target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def _fake_entry_points(eps):
    def entry_points(group=None, **kwargs):
        return [ep for ep in eps if group == "cdclip.plugins"]

    return entry_points


def test_plugins_load_lazily_on_first_miss(monkeypatch):
    loaded = []

    def plugin(registry):
        loaded.append(True)
        registry.register("my_refiner", lambda: "refined", kind="refiner")

    monkeypatch.setattr(
        metadata,
        "entry_points",
        _fake_entry_points(
            [_FakeEntryPoint("good", plugin), _FakeEntryPoint("broken", ImportError("missing dependency xyz"))]
        ),
    )
    monkeypatch.delenv("CDCLIP_NO_PLUGINS", raising=False)
    reg = Registry(builtin_modules=())
    reg.register("local", lambda: 1)
    assert reg.create("local") == 1 and not loaded  # a hit never scans entry points
    with pytest.warns(RuntimeWarning, match="plugin 'broken'.*failed to load.*missing dependency xyz"):
        assert reg.create("my_refiner") == "refined"  # a broken plugin never breaks the rest
    assert loaded == [True]
    reg.create("my_refiner")
    assert loaded == [True]  # plugins are loaded once


def test_plugin_autoload_can_be_disabled(monkeypatch):
    monkeypatch.setattr(
        metadata, "entry_points", _fake_entry_points([_FakeEntryPoint("good", lambda r: r.register("x", int))])
    )
    monkeypatch.setenv("CDCLIP_NO_PLUGINS", "1")
    reg = Registry(builtin_modules=())
    with pytest.raises(KeyError, match="autoloading is off"):
        reg.get("x")
    reg.load_plugins()  # explicit loading still works
    assert reg.get("x") is int


def test_import_is_light():
    """`import cdclip` pulls in neither open_clip nor timm (nor the heavy component modules)."""
    code = textwrap.dedent(
        """
        import sys, cdclip
        heavy = [m for m in ("open_clip", "timm", "pycocotools", "scipy", "cdclip.kernels.js") if m in sys.modules]
        print(",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_lazy_public_name_resolves():
    import cdclip.functional as CF

    for name in cdclip.__all__:
        assert getattr(cdclip, name) is not None, name
    for name in CF.__all__:
        assert callable(getattr(CF, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cdclip.nope


def test_every_public_component_documents_its_shapes():
    """House rule: every public class and function has a ``Shape:`` section (einops notation)."""
    import inspect

    import cdclip.functional as CF

    plumbing = {"__version__", "create", "get", "list_components", "register", "registry"}
    public = [(n, getattr(cdclip, n)) for n in cdclip.__all__ if n not in plumbing]
    public += [(n, getattr(CF, n)) for n in CF.__all__]
    missing = sorted({n for n, obj in public if "Shape:" not in (inspect.getdoc(obj) or "")})
    assert not missing, f"no Shape: section in the docstring of {missing}"


def test_every_builtin_module_imports():
    """A built-in module that fails to import is skipped by the registry; in a dev install none may fail."""
    import importlib

    from cdclip.registry import BUILTIN_MODULES

    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    cdclip.list_components()
    assert cdclip.registry._import_errors == {}


# ---------------------------------------------------------------------------- clashes with built-ins (issue 10 C)
@pytest.fixture
def global_registry():
    """The global registry, restored to its state before the test (entries, shadows, flags)."""
    from cdclip.registry import registry

    registry._load_builtins()
    saved = (dict(registry._entries), dict(registry._prefixes), dict(registry._shadowed), registry._plugins_loaded)
    yield registry
    registry._entries.clear()
    registry._entries.update(saved[0])
    registry._prefixes.clear()
    registry._prefixes.update(saved[1])
    registry._shadowed.clear()
    registry._shadowed.update(saved[2])
    registry._plugins_loaded = saved[3]


def test_a_clash_with_a_builtin_raises_at_registration_naming_it(global_registry):
    class MyPar: ...

    with pytest.raises(ValueError, match=r"'par' is already registered to cdclip\.refine\.par\.PAR \(built-in\)"):
        cdclip.register("par", MyPar)
    assert cdclip.get("par") is cdclip.PAR


def test_override_of_a_builtin_wins_and_unregister_restores_it(global_registry):
    class MyCDA: ...

    cdclip.register("cda", MyCDA, kind="refiner", override=True)
    assert cdclip.get("cda") is MyCDA
    from cdclip import CDAModule  # the built-in module stays importable

    # the built-in module registering again (a re-import) neither raises nor takes the name back
    global_registry.register("cda", CDAModule, kind="refiner")
    assert cdclip.get("cda") is MyCDA
    info = {i.name: i for i in global_registry.entries()}["cda"]
    assert info.origin == "user" and info.is_plugin
    global_registry.unregister("cda")
    assert cdclip.get("cda") is CDAModule


@pytest.mark.parametrize("name", ["CDA", "Cda", "cdA"])
def test_unknown_names_suggest_the_case_insensitive_match(name):
    with pytest.raises(KeyError, match=r"Did you mean 'cda'"):
        cdclip.create(name)


def test_cli_list_shows_plugins_with_kind_and_origin(global_registry, monkeypatch, capsys):
    from cdclip.cli import main

    def plugin(registry):
        registry.register("fancy_refiner", _FancyRefiner, kind="refiner")

    monkeypatch.setattr(metadata, "entry_points", _fake_entry_points([_FakeEntryPoint("fancy", plugin)]))
    monkeypatch.delenv("CDCLIP_NO_PLUGINS", raising=False)
    global_registry._plugins_loaded = False
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("fancy_refiner"))
    assert "refiner" in line and "plugin fancy" in line and "A refiner from a plugin." in line
    cda_line = next(row for row in out.splitlines() if row.startswith("cda "))
    assert "built-in" in cda_line
    assert main(["list", "--plugins"]) == 0
    only = [row for row in capsys.readouterr().out.splitlines() if row and not row.startswith("1 of")]
    assert len(only) == 1 and only[0].startswith("fancy_refiner")


class _FancyRefiner:
    """A refiner from a plugin."""


def test_fresh_process_clash_before_the_lazy_load_and_override_then_import():
    """In a fresh process the built-ins are not loaded yet: the clash must still show at once."""
    code = textwrap.dedent(
        """
        import importlib, cdclip
        try:
            cdclip.register("par", object)
        except ValueError as err:
            print("clash:", "cdclip.refine.par.PAR" in str(err))
        print("create cda:", type(cdclip.create("cda")).__name__)
        print("builtins listed:", all(n in cdclip.list_components() for n in ("par", "cda", "js_divergence")))

        class Mine: ...
        cdclip.register("cda", Mine, override=True)
        from cdclip import CDAModule
        import cdclip.affinity.cda as cda_module
        importlib.reload(cda_module)  # the built-in registers again: no error, the override stays
        print("override wins:", cdclip.get("cda") is Mine)
        """
    )
    env = {**os.environ, "CDCLIP_NO_PLUGINS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == [
        "clash: True", "create cda: CDAModule", "builtins listed: True", "override wins: True"
    ]  # fmt: skip
