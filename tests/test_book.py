"""Fast checks of the book's sources: pure file reads, no notebook is executed (nbmake does that).

They guard what a book build would only notice late, or never: a notebook missing from _toc.yml,
outputs committed by accident, a Colab install cell that points at another repository, a citation
key that references.bib lacks, a _config.yml setting that was lost, a number typed into a chapter's
prose instead of computed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
REPO_URL = CONFIG["repository"]["url"]

NOTEBOOKS = sorted(p for p in BOOK.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
MARKDOWN_PAGES = sorted(p for p in BOOK.rglob("*.md") if ".ipynb_checkpoints" not in p.parts)

# {cite}`a,b`, {cite:p}`a`, {cite:t}`a`, {cite:ps}`a` ...
CITE_ROLE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
BIB_KEY = re.compile(r"^@\s*(\w+)\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)
# A pip requirement of the form `capo-tutorial[extras] @ git+URL[@ref]`.
GIT_REQUIREMENT = re.compile(r"capo-tutorial(?:\[[\w,\s-]+\])?\s*@\s*git\+(https://[^\s\"'@]+)")


def _toc_entries(node: object) -> list[str]:
    """Every `root` and `file` entry of a _toc.yml tree, in order."""
    found: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if key in node:
                found.append(str(node[key]))
        for value in node.values():
            found.extend(_toc_entries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_toc_entries(item))
    return found


def _toc_path(entry: str) -> Path | None:
    """The file a _toc.yml entry names (the suffix may be left out), or None if there is none."""
    candidates = [ROOT / entry] if Path(entry).suffix else []
    candidates += [ROOT / f"{entry}{suffix}" for suffix in (".ipynb", ".md", ".rst")]
    return next((path for path in candidates if path.is_file()), None)


def _read_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


TOC_ENTRIES = _toc_entries(TOC)


# --- _toc.yml against the files ------------------------------------------------------------------


def test_the_test_runs_schedule_only_notebooks_that_exist() -> None:
    from conftest import NOTEBOOKS_ON_THE_WARM_UP  # tests/conftest.py: an ordering hint for xdist

    missing = set(NOTEBOOKS_ON_THE_WARM_UP) - {path.stem for path in NOTEBOOKS}
    assert not missing, f"tests/conftest.py names notebooks that are not in book/: {sorted(missing)}"


def test_every_toc_entry_exists_once() -> None:
    missing = [entry for entry in TOC_ENTRIES if _toc_path(entry) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    duplicated = sorted({entry for entry in TOC_ENTRIES if TOC_ENTRIES.count(entry) > 1})
    assert not duplicated, f"_toc.yml lists these entries more than once: {duplicated}"


def test_every_book_file_is_in_the_toc() -> None:
    # only_build_toc_files: a page that _toc.yml does not list is silently left out of the book.
    listed = {_toc_path(entry) for entry in TOC_ENTRIES}
    unlisted = [_rel(path) for path in [*NOTEBOOKS, *MARKDOWN_PAGES] if path not in listed]
    assert not unlisted, f"add these to _toc.yml (or delete them): {unlisted}"


def test_there_are_chapter_notebooks() -> None:
    assert len(NOTEBOOKS) >= 7, f"expected the seven chapters under book/, found {len(NOTEBOOKS)}"


# --- notebooks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = _read_notebook(path)
    dirty = [
        index
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{_rel(path)}: cells {dirty} have outputs or execution counts; clear them before committing "
        "(e.g. `jupyter nbconvert --clear-output --inplace`)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_the_python3_kernel(path: Path) -> None:
    kernel = _read_notebook(path).get("metadata", {}).get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{_rel(path)}: kernelspec name is {kernel!r}, expected 'python3'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_a_title(path: Path) -> None:
    first = _read_notebook(path)["cells"][0]
    assert first["cell_type"] == "markdown", f"{_rel(path)}: the first cell should be the title"
    titles = [line for line in _source(first).splitlines() if line.startswith("# ")]
    assert titles, f"{_rel(path)}: the first cell has no '# Title' line"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_the_package_on_colab_only(path: Path) -> None:
    cells = _code_cells(_read_notebook(path))
    assert cells, f"{_rel(path)}: no code cell"
    cell, source = cells[0], _source(cells[0])
    where = f"{_rel(path)}, first code cell"
    assert re.search(r"""if\s+["']google\.colab["']\s+in\s+sys\.modules\s*:""", source), (
        f'{where}: must act only on Colab (`if "google.colab" in sys.modules:`)'
    )
    install_lines = [line for line in source.splitlines() if "pip install" in line]
    assert install_lines, f"{where}: no `pip install` line"
    assert all(line.startswith((" ", "\t")) for line in install_lines), (
        f"{where}: `pip install` must sit inside the Colab check"
    )
    urls = GIT_REQUIREMENT.findall(source)
    assert urls, f"{where}: expected `capo-tutorial @ git+{REPO_URL}`"
    assert all(url.removesuffix(".git") == REPO_URL for url in urls), (
        f"{where}: installs from {urls}, but _config.yml's repository.url is {REPO_URL}"
    )
    tags = cell.get("metadata", {}).get("tags", [])
    assert {"remove-cell", "hide-input", "hide-cell"} & set(tags), (
        f"{where}: tag it `remove-cell` so that the book hides it (tags: {tags})"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_second_code_cell_prints_the_profile(path: Path) -> None:
    cells = _code_cells(_read_notebook(path))
    assert len(cells) >= 2, f"{_rel(path)}: expected a second code cell that prints the profile"
    source = _source(cells[1])
    assert "select_profile" in source and "print(" in source, (
        f"{_rel(path)}: the second code cell should print capo_tutorial.config.select_profile()'s choice"
    )


# --- bibliography --------------------------------------------------------------------------------


def _bib_keys() -> list[str]:
    text = "\n".join((ROOT / name).read_text(encoding="utf-8") for name in CONFIG.get("bibtex_bibfiles", []))
    entries = BIB_KEY.findall(text)
    return [key for entry_type, key in entries if entry_type.lower() not in {"comment", "string"}]


def _cited_keys() -> dict[str, set[str]]:
    """Citation key -> the book files that cite it."""
    texts = {_rel(path): path.read_text(encoding="utf-8") for path in MARKDOWN_PAGES}
    for path in NOTEBOOKS:
        cells = _read_notebook(path)["cells"]
        texts[_rel(path)] = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    cited: dict[str, set[str]] = {}
    for name, text in texts.items():
        for group in CITE_ROLE.findall(text):
            for key in filter(None, (part.strip() for part in group.split(","))):
                cited.setdefault(key, set()).add(name)
    return cited


def test_bibliography_keys_are_unique() -> None:
    keys = _bib_keys()
    assert keys, "references.bib has no entries"
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicated, f"references.bib defines these keys more than once: {duplicated}"


def test_every_citation_is_in_the_bibliography() -> None:
    known = set(_bib_keys())
    unknown = {key: sorted(files) for key, files in _cited_keys().items() if key not in known}
    assert not unknown, f"cited but not in references.bib (key: files): {unknown}"


# --- configuration -------------------------------------------------------------------------------


def test_config_builds_only_the_toc() -> None:
    assert CONFIG.get("only_build_toc_files") is True, "the root's other Markdown files must not be read"


def test_config_executes_notebooks_with_a_cache_and_fails_on_errors() -> None:
    execute = CONFIG.get("execute", {})
    sphinx_config = CONFIG.get("sphinx", {}).get("config", {}) or {}
    assert execute.get("execute_notebooks") == "cache"
    assert isinstance(execute.get("timeout"), int) and execute["timeout"] >= 60
    assert execute.get("allow_errors", False) is False
    raise_on_error = execute.get("raise_on_error", sphinx_config.get("nb_execution_raise_on_error"))
    assert raise_on_error is True, "a broken notebook must fail the build"


def test_config_has_bibtex_and_autodoc() -> None:
    bibfiles = CONFIG.get("bibtex_bibfiles", [])
    assert "book/references.bib" in bibfiles and (ROOT / "book/references.bib").is_file()
    extensions = CONFIG.get("sphinx", {}).get("extra_extensions", []) or []
    for extension in ("sphinx.ext.autodoc", "sphinx.ext.napoleon"):
        assert extension in extensions, f"_config.yml: sphinx.extra_extensions lacks {extension}"


def test_config_has_colab_launch_buttons_and_a_github_repository() -> None:
    assert CONFIG.get("launch_buttons", {}).get("colab_url") == "https://colab.research.google.com"
    repository = CONFIG["repository"]
    # sphinx-book-theme stops with "Provider not recognized" on an unknown host.
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository["url"]), repository["url"]
    assert repository.get("branch") == "main"
    assert repository.get("path_to_book", "") == ""


def test_repository_url_is_the_same_everywhere() -> None:
    # _config.yml is where the URL lives; every other file that names the repository must agree.
    owner_repo = re.compile(r"https://github\.com/[\w.-]+/capo[_-]tutorial\b")
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "environment.yml", *MARKDOWN_PAGES]
    files += NOTEBOOKS
    stale: dict[str, list[str]] = {}
    for path in filter(Path.is_file, files):
        others = {url for url in owner_repo.findall(path.read_text(encoding="utf-8")) if url != REPO_URL}
        if others:
            stale[_rel(path)] = sorted(others)
    assert not stale, f"these files name another repository than _config.yml's {REPO_URL}: {stale}"


def test_api_page_documents_existing_modules() -> None:
    api = (BOOK / "api.md").read_text(encoding="utf-8")
    modules = re.findall(r"^\.\. automodule:: (capo_tutorial[\w.]*)", api, re.MULTILINE)
    assert modules, "book/api.md documents no module"
    for module in modules:
        relative = Path(*module.split("."))
        exists = (ROOT / relative.with_suffix(".py")).is_file() or (ROOT / relative / "__init__.py").is_file()
        assert exists, f"book/api.md documents {module}, which is not in the package"


def test_environment_yml_installs_the_pinned_cpu_torch_first() -> None:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    dependencies = environment["dependencies"]
    assert any(str(dep).replace(" ", "").startswith("python=3.11") for dep in dependencies)
    pip = next(dep["pip"] for dep in dependencies if isinstance(dep, dict) and "pip" in dep)
    torch_at = next(i for i, req in enumerate(pip) if req.replace(" ", "").startswith("torch=="))
    package_at = next(i for i, req in enumerate(pip) if req.replace(" ", "").startswith("-e.["))
    assert torch_at < package_at, "torch must be pinned before the package is installed"


@pytest.mark.parametrize("path", sorted((ROOT / ".github" / "workflows").glob("*.yml")), ids=lambda p: p.name)
def test_workflow_is_valid_yaml(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML reads the key `on` as True.
    assert "jobs" in workflow and (True in workflow or "on" in workflow), f"{_rel(path)} is not a workflow"


# --- numbers in the prose ------------------------------------------------------------------------
# Every number the book states is computed by code: printed by a cell, or glued into the prose with
# {glue:text}. So, once the parts of a page that are not prose are taken out, a digit left in a
# chapter's Markdown is a number someone typed, and it must be one of the few below that no code
# computes. Taken out: code (fenced blocks, `inline code`), maths ($...$, $$...$$, {math} and every
# other role, e.g. {glue:text}, {ref}, {cite:p}; maths is for definitions, never for a measurement),
# link targets, MyST labels `(name)=`, directive options `:name: value`, HTML comments.

_NOT_PROSE = [
    re.compile(r"<!--.*?-->", re.DOTALL),
    re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL),  # fenced code, directives
    re.compile(r"\$\$.*?\$\$", re.DOTALL),
    re.compile(r"\{[\w:.-]+\}`[^`]*`"),  # roles: {glue:text}`x`, {ref}`...`, {cite:p}`...`, {math}`...`
    re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"),
    re.compile(r"`[^`\n]*`"),
    re.compile(r"\]\([^)\s]*\)"),  # [text](target): the target
    re.compile(r"<https?://[^>\s]*>"),
    re.compile(r"^\([\w.-]+\)=[ \t]*$", re.MULTILINE),
    re.compile(r"^:[\w-]+:.*$", re.MULTILINE),
    re.compile(r"^[ \t]*\d+\.[ \t]", re.MULTILINE),  # ordered-list markers
]

# Typed numbers allowed on every page: names that contain digits, and structure.
_ALLOWED_EVERYWHERE = [
    r"Qwen2\.5-0\.5B(?:-Instruct)?|SmolLM2-135M|Gemma 3(?: 270M)?|HelpSteer3",  # model, data set names
    r"\b(?:T4|L4|A100|H100|H200)\b",  # GPU cards by name
    r"\b(?:fp16|bf16|fp32|float16|bfloat16|float32|float64)\b",  # number formats
    r"\bUTF-8\b|\bBCP-47\b|\bCC-BY-4\.0\b",  # an encoding, a standard, a licence
    r"\bPython 3\.\d+\b",  # the oldest Python the package supports (pyproject's requires-python)
    r"\b[Cc]hapters? \d+(?:(?:,| and| or| to) \d+)*\b",  # chapter numbers
    r"\bseed \d+\b",  # a seed names a run, as a file name would (the cell that trains it sets it)
    r"\b[Ss]cale [12]\b",  # the names of the two experiment grids (experiments/results/scale1, scale2)
    # The CAPO abstract's headline, the only number of the paper the book may quote, in its units.
    r"\b16(?:%| percentage points| or more)",
]

# Typed numbers allowed on one page: worked examples' inputs and definitions, each said once.
_ALLOWED_ON_PAGE = {
    "ch1_rlhf_to_dpo.ipynb": [
        r"gap of 1 nat|gap of 3 nats|advantage of 1 nat",  # inputs of the Bradley-Terry examples
        r"\| [123] \| −\d+\.\d \| −\d+\.\d \| −\d+\.\d \| −\d+\.\d \|",  # the worked example's inputs
        r"[Pp]air [123]\b",  # the worked example's pairs, by number
        r"by 2 nats|rewards are 0|−20\.5 vs −18\.0 nats",  # read off that table
        r"1/3, not 1/2|step 0\b|is 0, not 0\.5|divides each by 3",  # strict accuracy, by definition
        r"learning rate of 10",  # an input of the example's gradient step
        r"probability 0\.95",  # the question the next formula answers
    ],
    "ch2_confidence_from_dpo.ipynb": [
        r"1 when absent|mean 1\b|always 1\b|all pairs, 1\b|step 0\b",  # definitions of the weights
        r"by 1\.2 nats per token",  # an input of the four-pair example, pair B
        r"below 50%",  # the condition of the cited theorem on symmetric losses
        r"at 20% flipped|at 40%",  # the toy's two noise rates, set in its code
    ],
    "ch3_multilingual_data.ipynb": [
        r"342 vs 343",  # what a near miss looks like
        r"1 = high, 3 = low",  # the resource-tier scale of the cited survey
        r"the 256 byte values",  # a byte-level tokenizer's base vocabulary, by definition
        r"0\.5/n|ends in 7|n\+1",  # the flipping rules of capo_tutorial.testbed, stated as code does
        r"at 20% and 40%",  # two noise rates named by their value
        r"from −3|to \+3|response [12] is|rated ±1|tie \(0\)",  # HelpSteer3's preference scale
    ],
}

_DIGIT_CONTEXT = 45


def _prose(text: str) -> str:
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    return text


def _typed_numbers(page: str, text: str) -> list[str]:
    """Each digit left in `text`'s prose once the allowed numbers are removed, in its context."""
    prose = re.sub(r"\s+", " ", _prose(text))  # the patterns match across line breaks
    for allowed in [*_ALLOWED_EVERYWHERE, *_ALLOWED_ON_PAGE.get(page, [])]:
        prose = re.sub(allowed, " ", prose)
    found, end = [], -1
    for match in re.finditer(r"\d", prose):
        if match.start() > end:
            start, end = max(0, match.start() - _DIGIT_CONTEXT), match.end() + _DIGIT_CONTEXT
            found.append(prose[start:end].strip())
    return found


def _markdown_parts(path: Path) -> list[tuple[str, str]]:
    """(where, text) for each Markdown cell of a notebook, or for the whole of a Markdown page."""
    if path.suffix == ".md":
        return [(_rel(path), path.read_text(encoding="utf-8"))]
    cells = _read_notebook(path)["cells"]
    return [
        (f"{_rel(path)}, cell {i}", _source(c)) for i, c in enumerate(cells) if c["cell_type"] == "markdown"
    ]


@pytest.mark.parametrize("path", [*NOTEBOOKS, *MARKDOWN_PAGES], ids=lambda p: p.name)
def test_numbers_in_the_prose_are_computed(path: Path) -> None:
    typed = [
        f"{where}: ...{context}..."
        for where, text in _markdown_parts(path)
        for context in _typed_numbers(path.name, text)
    ]
    assert not typed, (
        "numbers typed into the prose (glue them from the code that computes them, e.g.\n"
        "glue('name', value) in a cell and {glue:text}`name:.3f` in the text, or say it without "
        "the number):\n" + "\n".join(typed)
    )


def test_typed_number_scan_sees_through_markup() -> None:
    text = (
        "(sec-x)=\n## Title\nAt $\\beta = 0.1$ the run `max_steps=300` gives {glue:text}`acc:.3f` "
        "({ref}`chapter 4 <ch-training>`, [see](https://example.org/2024)) on Gemma 3 270M with a T4.\n"
        "```python\nx = 12\n```\n1. one\n2. two, 400 pairs\n"
    )
    (found,) = _typed_numbers("any.ipynb", text)
    assert found.endswith("one two, 400 pairs") and not re.search(r"\d", found.replace("400", ""))
    # An allowance holds on its own page only.
    assert _typed_numbers("ch1_rlhf_to_dpo.ipynb", "a learning rate of 10") == []
    assert _typed_numbers("ch2_confidence_from_dpo.ipynb", "a learning rate of 10") == [
        "a learning rate of 10"
    ]


@pytest.mark.parametrize("page", sorted(_ALLOWED_ON_PAGE))
def test_every_allowance_is_still_needed(page: str) -> None:
    # An allowance that matches nothing any more would let the next typed number through unseen.
    path = BOOK / page
    assert path.is_file(), f"_ALLOWED_ON_PAGE names {page}, which is not in book/"
    prose = " ".join(re.sub(r"\s+", " ", _prose(text)) for _, text in _markdown_parts(path))
    for allowed in _ALLOWED_ON_PAGE[page]:
        stale = [part for part in re.split(r"(?<!\\)\|", allowed) if not re.search(part, prose)]
        assert not stale, f"{page}: the allowances {stale} match nothing in its prose; remove them"
