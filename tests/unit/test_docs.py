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
