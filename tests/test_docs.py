"""The docs match the committed files: generated tables, links, and the front page's size."""

import json
import re
from pathlib import Path

import pytest

from jaxmnist import configs
from tests.conftest import experiment

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def summarize():
    return experiment("summarize")


def test_every_generated_table_is_what_the_committed_files_give(summarize, capsys):
    code = summarize.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_a_changed_figure_in_a_generated_table_is_caught(summarize):
    readme = (REPO / "README.md").read_text()
    block = next(summarize.BLOCK.finditer(readme))
    assert block["spec"] == "recipes"
    tampered = readme.replace(block["body"], block["body"].replace("99.60", "99.70"), 1)
    assert tampered != readme
    assert summarize.render(tampered) == readme  # what --check compares against


def test_an_unknown_table_kind_is_one_clear_error(summarize):
    with pytest.raises(SystemExit, match="unknown generated table 'nonsense'"):
        summarize.render("<!-- generated: nonsense -->\n<!-- end generated -->")


def test_docs_have_generated_tables_in_each_results_page():
    for name in ("README.md", "docs/selection-fast.md", "docs/selection-small.md",
                 "docs/selection-fast-frontier4.md", "docs/selection-tiny.md",
                 "docs/selection-micro.md",
                 "docs/selection-nano.md", "docs/frontier.md", "docs/performance.md"):
        assert "<!-- generated: " in (REPO / name).read_text(), name


def _paragraph_lengths(text: str) -> list[int]:
    """Lines per paragraph of prose: code blocks, tables, headings and pictures apart,
    each list item a paragraph of its own."""
    lengths, current, fence = [], 0, False
    for line in text.splitlines() + [""]:
        if line.startswith("```"):
            fence, current = not fence, 0
            continue
        item = re.match(r"\s*(- |\d+\. )", line)
        if fence:
            continue
        if not line.strip() or line.startswith(("|", "<!--", "#", "![")) or item:
            lengths.append(current)
            current = 1 if item else 0
        else:
            current += 1
    return lengths


def test_the_readme_is_a_front_page_and_each_doc_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
    for path in DOCS:
        text = path.read_text()
        assert len(text.splitlines()) <= 300, path.name
        assert max(_paragraph_lengths(text)) <= 8, path.name


def test_every_relative_link_and_picture_exists():
    docs = DOCS + [REPO / "experiments/README.md", REPO / "experiments/results/README.md"]
    for path in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target:
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(REPO)}: {target}"


def test_no_figure_is_cited_by_a_line_number_of_a_jsonl_file():
    pattern = re.compile(r"(\blines? \d+|\b(first|second|third|last|fourth) lines?\b)"
                         r"[^.]{0,60}\.jsonl", re.I)
    for path in DOCS + [REPO / "experiments/README.md"]:
        assert not pattern.search(path.read_text()), path.name


def test_the_experiments_index_lists_every_script():
    index = (REPO / "experiments/README.md").read_text()
    scripts = [p.name for p in (REPO / "experiments").iterdir()
               if p.suffix in (".py", ".sh", ".ipynb")]
    assert scripts and [s for s in scripts if f"`{s}`" not in index] == []


@pytest.mark.parametrize("val_8, shifts", [((0.9928, 0.9934), 4), ((0.9934, 0.9936), 8)])
def test_the_tta_count_is_8_only_for_more_images_right_on_validation(summarize, tmp_path,
                                                                      val_8, shifts):
    import frontier  # experiments/, on the path the summarize fixture gives

    results = tmp_path / "results"
    # two validation seeds: 4 shifts get 99.34 and 99.28 %; 8 shifts the same count of
    # images in the other order (equal, whatever the float sums give), or one image more
    for seed, (v4, v8) in enumerate(zip((0.9934, 0.9928), val_8)):
        run = results / (frontier.TTA_SELECTION["tiny"] + (f"-seed{seed}" if seed else ""))
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps(
            {"epoch": 1, "val_accuracy_by_shifts": {"0": 0.99, "4": v4, "8": v8}}) + "\n")
    tiny = results / "tiny"
    tiny.mkdir()
    (tiny / "config.json").write_text(json.dumps(
        configs.Config(arch="c4 p c8", epochs=1).to_dict()))
    (tiny / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_accuracy": 0.99}) + "\n")
    (results / "studies").mkdir()
    (results / "studies" / "tta_probe.jsonl").write_text(json.dumps(
        {"run": "tiny", "test_accuracy_by_shifts": {"0": 0.99, "4": 0.992, "8": 0.993}}) + "\n")
    [point] = frontier.tta_points(results)
    assert point["recipe"] == "tiny" and point["shifts"] == shifts
    assert point["mean"] == pytest.approx({4: 99.2, 8: 99.3}[shifts])
    assert point["params"] == 4 * 9 + 8 + 8 * 9 * 4 + 16 + 80
