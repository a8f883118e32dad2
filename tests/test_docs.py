"""The documentation site builds with ``mkdocs build --strict`` and its generated pages are complete.

The CLI reference and the presets page are generated at build time (``docs/hooks/``), so these
tests check the built HTML against the code: every sub-command of ``build_parser()``, every YAML
preset and every public name of ``cdclip`` and ``cdclip.functional`` must be there. The build is
offline (MathJax is only a script URL for readers' browsers).
"""

from __future__ import annotations

import html
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

DOCS = REPO / "docs"

for _module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx"):
    pytest.importorskip(_module, reason="the docs extra (pip install -e '.[dev]') is not installed")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the site once for this module (about 15 s) and return its folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "CDCLIP_NO_PLUGINS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def _text(path: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def _section(page: str, anchor: str) -> str:
    """The HTML of a page from the heading with id ``anchor`` to the next heading of that level."""
    start = page.index(f'id="{anchor}"')
    following = re.search(r"<h2 ", page[start:])
    return page[start : start + following.start()] if following else page[start:]


def _subcommands() -> list[str]:
    import argparse

    from cdclip.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


@pytest.mark.slow
def test_site_builds_strictly_with_every_page(site: Path):
    for page in ("index", "concepts", "method", "drop-in", "plugins", "cli", "presets", "reproduction",
                 "training", "evaluation", "baselines", "reliability", "distributed", "benchmarks", "examples"):  # fmt: skip
        assert (site / f"{page}.html").is_file(), page
    for page in ("index", "components", "functional", "clip", "pipeline", "config", "data", "registry"):
        assert (site / "api" / f"{page}.html").is_file(), page
    assert not (site / "hooks").exists()  # the build's own code is not published
    assert (site / "javascripts" / "mathjax.js").is_file()
    concepts = (site / "concepts.html").read_text(encoding="utf-8")
    assert concepts.count('class="arithmatex"') > 20  # the formulas are marked up for MathJax
    assert "mathjax" in concepts and "javascripts/mathjax.js" in concepts


@pytest.mark.slow
def test_cli_reference_has_the_help_of_every_subcommand(site: Path):
    page = (site / "cli.html").read_text(encoding="utf-8")
    commands = _subcommands()
    assert {"cams", "train", "eval", "refine", "predict"} <= set(commands)
    for name in commands:
        section = html.unescape(_section(page, f"cdclip-{name}"))
        assert f"usage: cdclip {name}" in section, name
    cams = html.unescape(_section(page, "cdclip-cams"))
    for flag in ("--preset", "--list-presets", "--refine", "--fusion", "--shard"):
        assert flag in cams, flag
    assert "--set KEY=VALUE" in html.unescape(_section(page, "cdclip-train"))
    assert "<!-- cdclip:cli-reference -->" not in page


@pytest.mark.slow
def test_presets_page_names_every_yaml_preset_and_its_keys(site: Path):
    from cdclip.presets import list_presets

    page = (site / "presets.html").read_text(encoding="utf-8")
    files = sorted(p.stem for p in (REPO / "cdclip" / "presets").glob("*.yaml"))
    assert files == sorted(info["name"] for info in list_presets())
    for name in files:
        assert f'id="{name}"' in page, name
    clip_es = html.unescape(_section(page, "clip-es"))
    assert "model.box_rule" in clip_es and '"clip-es"' in clip_es
    weclip = html.unescape(_section(page, "weclip-voc"))
    assert "data.labels_from" in weclip and '"mask"' in weclip
    assert "<!-- cdclip:presets -->" not in page


@pytest.mark.slow
def test_api_reference_covers_the_public_names(site: Path):
    import cdclip
    import cdclip.functional

    ids = set()
    for page in (site / "api").glob("*.html"):
        ids |= set(re.findall(r'id="(cdclip[\w.]*)"', page.read_text(encoding="utf-8")))
    documented = {i.rsplit(".", 1)[-1] for i in ids}
    public = {n for n in cdclip.__all__ if not n.startswith("_")} | set(cdclip.functional.__all__)
    missing = sorted(public - documented)
    assert not missing, f"public names without an API entry: {missing}"
    text = _text(site / "api" / "functional.html")
    assert "<!-- cdclip:functional-api -->" not in text and "pairwise_js" in text


def _python_blocks(page: Path) -> list[str]:
    """The page's plain ```python blocks (blocks with a title, which need weights or files, are left out)."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


@pytest.mark.parametrize("page", ["drop-in.md", "plugins.md", "index.md"])
def test_python_examples_on_the_pages_run(page: str):
    blocks = _python_blocks(DOCS / page)
    assert blocks, page
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/{page}[{i}]", "exec"), {"__name__": f"docs_example_{i}"})


def test_docs_point_only_inside_the_repository():
    sources = [*DOCS.rglob("*.md"), REPO / "mkdocs.yml"]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for pattern in (r"\.\./shared", r"DESIGN(\.md)?\s*§", r"\]\(\.\./\.\./", r"file://"):
            assert not re.search(pattern, text), f"{path.relative_to(REPO)}: {pattern}"
        for target in re.findall(r"\]\(([^)#\s]+)", text):  # relative links resolve inside docs/
            if "://" not in target:
                resolved = (path.parent / target).resolve()
                assert resolved.is_relative_to(DOCS.resolve()) and resolved.exists(), f"{path.name}: {target}"


def test_docs_hooks_are_importable_and_deterministic():
    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        for name in ("cli_reference", "presets_page", "functional_api"):
            module = importlib.import_module(name)
            first = module.render()
            assert first and first == module.render(), name
            marker = f"<!-- {module.MARKER} -->"
            assert module.on_page_markdown(f"# t\n\n{marker}\n") == f"# t\n\n{first}\n"
            assert module.on_page_markdown("# no marker\n") == "# no marker\n"
    finally:
        sys.path.remove(str(DOCS / "hooks"))
