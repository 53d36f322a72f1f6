"""docs/gpu.md links only what exists: its relative links (and their #anchors in README.md), and every repository
file or module it names in backticks (configs/..., cluster/..., tests/..., bench.gpu_check)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "gpu.md"


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", md.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_the_gpu_page_links_only_what_exists():
    text = PAGE.read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        path, _, anchor = target.partition("#")
        doc = (PAGE.parent / path).resolve() if path else PAGE
        assert doc.is_file(), target
        assert not anchor or anchor in anchors(doc), target
    named = set(re.findall(r"`((?:configs|cluster|tests|bench|actors|learner|data_gen)/[\w./-]+\.(?:py|yaml))", text))
    assert named and all((ROOT / n).is_file() for n in named), sorted(n for n in named if not (ROOT / n).is_file())
    modules = [m for m in re.findall(r"python -m ([\w.]+)", text) if m not in ("venv", "pip")]  # the stdlib's
    assert modules and all((ROOT / (m.replace(".", "/") + ".py")).is_file() for m in modules), modules


# The README, the guides under docs/ and the results notebook (issue 27): links resolve, every results entry is
# dated and reproducible, code cites docs/algorithm.md by its numbered sections, the README stays a front page.
DOCS = sorted((ROOT / "docs").rglob("*.md"))
CODE_DIRS = ("rewards", "data_gen", "configs", "actors", "learner", "cluster", "bench", "tests")


def code_files() -> list[Path]:
    files = [ROOT / "pyproject.toml", ROOT / "Makefile"]
    for d in CODE_DIRS:
        files += [p for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".yaml", ".yml", ".toml", ".sh")]
    return files


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    for page in [ROOT / "README.md", *DOCS]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not this repository's
                continue
            path, _, anchor = target.partition("#")
            doc = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {target}"
            assert doc.exists(), where
            if doc.is_dir():
                assert not anchor, where
                continue
            assert not anchor or anchor in anchors(doc), where


def test_every_results_entry_has_a_date_and_a_command():
    pages = [p for p in (ROOT / "docs" / "results").glob("*.md") if p.name != "README.md"]
    assert pages
    for page in pages:
        entries = re.split(r"^## ", page.read_text(), flags=re.M)[1:]
        assert entries, page.name
        for entry in entries:
            title = entry.splitlines()[0]
            assert re.search(r"^- \*\*Date:\*\* \d{4}-\d{2}-\d{2}", entry, re.M), f"{page.name}: {title}: no date"
            assert re.search(r"^- \*\*Command:\*\* `[^`]+`", entry, re.M), f"{page.name}: {title}: no command"


def test_code_cites_only_docs_algorithm_sections_that_exist():
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "algorithm.md").read_text(), re.M))
    assert sections == {str(n) for n in range(1, 10)}, sorted(sections)
    cited = set()
    for f in code_files():
        if f == Path(__file__).resolve():  # this file names what it looks for
            continue
        text = f.read_text(errors="replace")
        where = str(f.relative_to(ROOT))
        assert "SPEC §" not in text and "ARCHITECTURE.md" not in text, where
        # ../shared/data is where CI lays the real benchmark samples (a data path, not a citation)
        assert not re.search(r"\.\./shared/(?!data\b)", text), where
        assert not re.search(r"shared/SPEC", text), where
        cited |= set(re.findall(r"docs/algorithm\.md §(\d+)", text))
    assert cited and cited <= sections, sorted(cited - sections)


def test_every_released_file_algorithm_md_follows_is_named_with_its_commit():
    text = (ROOT / "docs" / "algorithm.md").read_text()
    for n in range(1, 10):
        body = re.split(r"^## \d+\. ", text, flags=re.M)[n]
        assert "Gabesarch/grounded-rl@e7970c0:" in body.split("\n\n", 2)[1] or "arXiv" in body, f"§{n}"


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    text = "\n".join(lines)
    assert "make demo   #" in text and "make test   #" in text
