"""The package's layering (issue 17), read from the source with `ast`; nothing is imported.

- The Hub files at the package's root (what the Hub copies into a model repository and a `trust_remote_code` load
  runs) import only the standard library, the third-party packages of `HUB_THIRD_PARTY` and each other, by sibling
  relative import: an absolute import of this package, or of anything else, breaks remote loading.
- Imports run one way: scripts -> publish -> evaluation -> train -> data -> Hub files. A layer imports only the layers
  below it (and its own modules), not even inside a function.
- No function-local import between the project's own modules (the package, scripts/, benchmarks/): a hidden import
  hides a layering violation and an import cycle. The only ones allowed are for an optional dependency, listed in
  `LOCAL_IMPORT_ALLOWLIST` with the reason.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dilated_vit_mae"
PACKAGE_DIR = REPO_ROOT / PACKAGE

HUB_FILES = (
    "configuration_dilated_vit_mae", "modeling_dilated_vit_mae", "image_processing_dilated_vit_mae",
    "pipeline_dilated_vit_mae", "handler",
)  # fmt: skip
# exactly what the Hub files import besides the standard library and each other (the test fails when it changes either
# way, so that this line always says what a `trust_remote_code` user needs)
HUB_THIRD_PARTY = {"torch", "transformers", "numpy", "PIL"}
# the layer of each sub-package, and the layers it may import ("hub": the Hub files and the package's __init__)
LAYERS = {
    "data": {"hub"},
    "train": {"data", "hub"},
    "evaluation": {"train", "data", "hub"},
    "publish": {"evaluation", "train", "data", "hub"},
}
# (importing file, function, imported module): the function-local imports of the project's own modules that may stay,
# each for an optional dependency
LOCAL_IMPORT_ALLOWLIST = {
    # `dilated_vit_mae.load_celeba`: data.loading needs `datasets` (the `train` extra); the model alone must not
    ("dilated_vit_mae/__init__.py", "__getattr__", "dilated_vit_mae.data.loading"),
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository
    line: int
    target: str  # the absolute module name ("dilated_vit_mae.data.loading", "torch.nn")
    level: int  # 0: absolute; 1: `from .x import`, 2: `from ..x import`, ...
    function: str | None  # the enclosing function, None at module level

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else ""
        return f"{self.file}:{self.line}{where} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    """Every import statement of the file (module level, in functions, in classes), with relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    file = path.relative_to(REPO_ROOT).as_posix()
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, function or getattr(child, "name", "<lambda>"))
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(file, child.lineno, alias.name, 0, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module
                # `from . import x` / `from package import module`: each name may be a module of its own
                targets = [module] if child.module else [f"{module}.{alias.name}" for alias in child.names]
                found.extend(Import(file, child.lineno, target, child.level, function) for target in targets)
            visit(child, function)

    visit(tree, None)
    return found


def package_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def project_files() -> list[Path]:
    return package_files() + sorted((REPO_ROOT / "scripts").glob("*.py")) + sorted((REPO_ROOT / "benchmarks").glob("*.py"))


def is_project(target: str) -> bool:
    return target == PACKAGE or target.startswith(PACKAGE + ".")


def layer_of(module: str) -> str:
    """`hub` for the package's root (its __init__ and the Hub files), else the sub-package (`data`, `train`, ...)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in HUB_FILES:
        return "hub"
    return parts[1]


def hub_file_paths() -> list[Path]:
    return [PACKAGE_DIR / f"{name}.py" for name in HUB_FILES]


def test_the_files_are_found():
    # the checks below see every module: each Hub file, each layer, the scripts
    assert all(path.is_file() for path in hub_file_paths())
    layers = {layer_of(module_name(path)) for path in package_files()}
    assert layers == {"hub", *LAYERS}, layers
    assert len(imports_of(PACKAGE_DIR / "train" / "finetune.py")) > 5


@pytest.mark.parametrize("name", HUB_FILES)
def test_hub_files_import_only_their_dependencies_and_each_other(name):
    path = PACKAGE_DIR / f"{name}.py"
    problems = []
    for item in imports_of(path):
        top = item.target.split(".")[0]
        if is_project(item.target):
            sibling = item.target.split(".")[1] if item.target.count(".") == 1 else None
            if item.level != 1 or sibling not in HUB_FILES:
                problems.append(f"{item}: the Hub copies only the Hub files, so import a sibling Hub file as `from .x`")
        elif top not in sys.stdlib_module_names and top not in HUB_THIRD_PARTY:
            problems.append(f"{item}: a trust_remote_code user has only {sorted(HUB_THIRD_PARTY)}")
    assert not problems, "\n".join(problems)


def test_hub_third_party_set_is_exactly_what_they_import():
    used = {
        item.target.split(".")[0]
        for path in hub_file_paths()
        for item in imports_of(path)
        if not is_project(item.target) and item.target.split(".")[0] not in sys.stdlib_module_names
    }
    assert used == HUB_THIRD_PARTY


def test_the_package_init_imports_only_the_hub_files():
    # `import dilated_vit_mae` must stay as light as the model: torch, transformers and the Hub files
    problems = []
    for item in imports_of(PACKAGE_DIR / "__init__.py"):
        if (item.file, item.function, item.target) in LOCAL_IMPORT_ALLOWLIST:
            continue
        if is_project(item.target) and layer_of(item.target) != "hub":
            problems.append(str(item))
        elif not is_project(item.target) and item.target.split(".")[0] not in sys.stdlib_module_names | HUB_THIRD_PARTY:
            problems.append(str(item))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_only_the_layers_below(layer):
    allowed = LAYERS[layer] | {layer}
    problems = [
        f"{item}: {layer}/ may import only {sorted(allowed)}"
        for path in sorted((PACKAGE_DIR / layer).rglob("*.py"))
        for item in imports_of(path)
        if is_project(item.target) and layer_of(item.target) not in allowed
    ]
    assert not problems, "\n".join(problems)


def test_no_function_local_imports_between_the_projects_modules():
    local = [
        item
        for path in project_files()
        for item in imports_of(path)
        if item.function is not None and (is_project(item.target) or item.level > 0)
    ]
    problems = [str(item) for item in local if (item.file, item.function, item.target) not in LOCAL_IMPORT_ALLOWLIST]
    assert not problems, "import these at the top of the module (or add an optional dependency's to the allowlist):\n" + "\n".join(problems)  # fmt: skip
    # the allowlist holds only what is still there
    assert {(item.file, item.function, item.target) for item in local} == LOCAL_IMPORT_ALLOWLIST
