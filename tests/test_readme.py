"""The README stays the one place every setting is documented."""

from __future__ import annotations

import re

from ollabridge.config import Settings
from tests.procs import ROOT


def test_every_environment_variable_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.M))
    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names.update(getattr(alias, "choices", None) or [alias])
    assert names - documented == set(), "add these to the README's configuration table"


def test_ci_runs_the_readmes_test_command():
    assert "bash tests/run.sh" in (ROOT / "README.md").read_text()
    assert "tests/run.sh" in (ROOT / ".ci/run").read_text()
