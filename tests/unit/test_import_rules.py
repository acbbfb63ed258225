"""The import rules docs/architecture.md states, checked against every import in the package.

Imports inside functions count as much as those at the top: a lazy import is still an arrow a
reader has to follow, and a loop through one is still a loop.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "edgefleet"

# The layers, lowest first: a package may import only from layers below its own (so the drawing
# has no circle). The small helpers at layer 0 import nothing of ours but errors.
LAYERS: dict[str, int] = {
    **dict.fromkeys(("_proto", "errors", "security", "tls", "metrics"), 0),
    "config": 1,
    "platform": 2,
    "train": 3,
    "eval": 4,
    "mlflow": 5,
    "federation": 6,
    "serve": 6,
    "audit": 7,
    "cli": 8,
}
# Pure policies: decisions and arithmetic, unit-tested without a cluster. No Ray, ever.
POLICIES = (
    "serve/router.py",
    "serve/hedging.py",
    "serve/quotas.py",
    "serve/batch_model.py",
    "federation/strategies.py",
    "federation/ledger.py",
    "federation/secagg.py",
    "federation/round_rules.py",
    "federation/payload.py",
    "audit/stats.py",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth, as absolute dotted names."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = _module_name(path).split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)  # `from edgefleet import metrics`


def _top(module: str) -> str | None:
    """The edgefleet package (or top-level module) a dotted name belongs to; None outside edgefleet."""
    parts = module.split(".")
    return parts[1] if parts[0] == "edgefleet" and len(parts) > 1 else None


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _arrows() -> Iterator[tuple[str, str, Path]]:
    """(importer's package, imported package, file) for every import across packages."""
    for path in _sources():
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue
        src = _top(_module_name(path))
        for target in map(_top, _imports(path)):
            if src and target and target != src and target in LAYERS | {"client": 0}:
                yield src, target, path


def test_every_package_has_a_layer() -> None:
    known = set(LAYERS) | {"client"}
    found = {_top(_module_name(p)) for p in _sources()} - {None, "__init__"}
    assert found <= known, f"packages with no place in the drawing: {sorted(found - known)}"


def test_arrows_point_down_the_layers() -> None:
    """No package imports one at its own layer or above: the structure drawing has no circle."""
    up = sorted(
        {
            f"{path.relative_to(PACKAGE.parent)}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
            for src, dst, path in _arrows()
            if src in LAYERS and dst in LAYERS and LAYERS[dst] >= LAYERS[src]
        }
    )
    assert not up, "imports against the layers:\n" + "\n".join(up)


def test_the_sdk_imports_nothing_of_the_platform() -> None:
    """``edgefleet.client`` is the base install (grpcio + protobuf): only itself and the stubs."""
    bad = sorted(
        f"{path.relative_to(PACKAGE.parent)} imports {m}"
        for path in (PACKAGE / "client").rglob("*.py")
        for m in _imports(path)
        if (_top(m) not in (None, "client", "_proto"))
        or m.split(".")[0] in ("ray", "torch", "transformers", "mlflow", "pydantic", "yaml", "rich")
    )
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_cli() -> None:
    bad = sorted(str(path.relative_to(PACKAGE.parent)) for src, dst, path in _arrows() if dst == "cli" and src != "cli")
    assert not bad, f"the CLI is a leaf; imported by: {bad}"


@pytest.mark.parametrize("policy", POLICIES)
def test_policies_import_no_ray(policy: str) -> None:
    ray = sorted(m for m in _imports(PACKAGE / policy) if m.split(".")[0] == "ray")
    assert not ray, f"{policy} is a pure policy but imports {ray}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walk finds imports inside functions (else the rules above could pass vacuously)."""
    fake = tmp_path / "edgefleet_probe.py"
    fake.write_text("def f():\n    import ray\n    from edgefleet.cli import main\n")
    found = set(_imports(fake))
    assert {"ray", "edgefleet.cli", "edgefleet.cli.main"} <= found
