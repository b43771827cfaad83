import re
from pathlib import Path

import pytest
import yaml

from worker.settings import settings_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("document", ["README.md", "docs/operations.md"])
def test_settings_tables_match_the_settings_model(document):
    text = (ROOT / document).read_text()
    start = text.index("<!-- settings:start -->\n") + len("<!-- settings:start -->\n")
    end = text.index("<!-- settings:end -->")
    assert text[start:end] == settings_table(), (
        f"run: anomaly-worker settings, paste into {document}"
    )


def test_every_alert_rule_has_a_runbook_section():
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    runbook = (ROOT / "docs/operations.md").read_text()
    for rule in rules["groups"][0]["rules"]:
        assert f"### {rule['alert']}\n" in runbook
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme.split("## ", 1)[0]
    assert "scripts/test.sh" in ci


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


DOCUMENTS = [
    "README.md",
    "DEVELOPERS.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_point_at_files_and_headings_that_exist(document):
    path = ROOT / document
    text = path.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {file_part}")
            continue
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.MULTILINE)
            if anchor not in {_anchor(h) for h in headings}:
                broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{document}: " + "; ".join(broken)


def test_the_readme_commands_show_the_projects_output_not_the_installers():
    """On a fresh clone both commands set up .venv first: pip says only errors, and the
    package metadata holds nothing setuptools warns about (its warnings filled the demo's
    first screen)."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if "install" in line and "pip" in line]
    assert installs and all("${pip[@]}" in line for line in installs), installs
    assert "pip=(.venv/bin/python -m pip -qq --disable-pip-version-check)" in setup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("document", DOCUMENTS)
def test_paths_the_docs_name_exist(document):
    """A path in backticks (`worker/kafka/ports.py`, `tests/unit/delivery/`, a glob such as
    `worker/kafka/confluent*.py`) names something in the checkout."""
    text = (ROOT / document).read_text()
    named = re.findall(
        r"`((?:worker|training|tests|bench|scripts|demo|deploy|docs)/[\w./*{},-]*)`", text
    )
    missing = []
    for path in named:
        if "{" in path:
            continue  # a brace list is a shorthand, not a path
        if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
            missing.append(path)
    assert not missing, f"{document} names paths that do not exist: {missing}"
