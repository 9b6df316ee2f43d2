"""The test process, and every Python it starts, imports installed distributions from
site-packages, never from a same-named folder of this repository (README, "Tests and the import
path"): the repository's top-level kernels/ once shadowed the `kernels` distribution that
transformers imports at load, and every test that loaded a transformers model failed."""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# make's .venv lies inside the repository; what is installed there is site-packages, not ours.
ENVIRONMENT = Path(sys.prefix).resolve()
# Our own distribution is installed editable: its modules live in this repository by design.
OWN_TOP_LEVEL = {"lpu_jax", "tests"}


def inside_repository(path: str | Path | None) -> bool:
    # torch.ops and torch.classes name no file (__file__ "_ops.py", relative)
    if path is None or not Path(path).is_absolute():
        return False
    path = Path(path).resolve()
    return path.is_relative_to(REPO) and not path.is_relative_to(ENVIRONMENT)


def repository_top_level_names() -> set[str]:
    """What `import NAME` would reach in the repository if its root were on sys.path."""
    return {entry.stem if entry.suffix == ".py" else entry.name
            for entry in REPO.iterdir()
            if not entry.name.startswith(".") and (entry.is_dir() or entry.suffix == ".py")}


def path_entries_inside_repository(path: list[str]) -> list[str]:
    # "" is the working directory, which the tests and make test start from the root; entries
    # that name no folder (the editable install's path hook) import nothing from one.
    folders = [(entry, Path(entry or os.getcwd()).absolute()) for entry in path]
    return [entry for entry, folder in folders if folder.is_dir() and inside_repository(folder)]


def test_the_repository_root_is_not_on_the_import_path():
    assert path_entries_inside_repository(sys.path) == []
    assert path_entries_inside_repository(
        os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.environ.get("PYTHONPATH")
        else []) == []


def test_no_repository_folder_shadows_an_installed_distribution():
    provided = importlib.metadata.packages_distributions()
    clashes = sorted((repository_top_level_names() & set(provided)) - OWN_TOP_LEVEL)
    found = {name: importlib.util.find_spec(name) for name in clashes}
    shadowed = {name: spec.origin for name, spec in found.items()
                if spec is not None and inside_repository(spec.origin)}
    assert shadowed == {}, f"found in the repository, not in site-packages: {shadowed}"


def test_transformers_loads_every_distribution_it_needs_from_site_packages():
    import transformers
    from transformers.integrations import hub_kernels  # noqa: F401  (imports `kernels` if installed)
    transformers.LlamaForCausalLM  # the lazy module loads modeling_utils and what it imports
    strays = sorted(name for name, module in list(sys.modules.items())
                    if name.partition(".")[0] not in OWN_TOP_LEVEL
                    and inside_repository(getattr(module, "__file__", None)))
    assert strays == []


def test_a_python_the_tests_start_keeps_the_repository_off_its_path():
    # As the CLI tests start their tools: this interpreter, from the repository root, the
    # test session's environment.
    child = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ), check=True)
    assert path_entries_inside_repository(json.loads(child.stdout)) == []
