"""README's two set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_readme_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert len(commands) == 2, "README's set-up section must hold exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for cmd in commands:
        assert cmd.strip() in ci, f"CI does not run README's command: {cmd}"


def test_test_extra_holds_every_reference_library():
    """A fresh ``pip install -e '.[test]'`` must run every reference check the tests ``require``."""
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {re.split(r"[<>=\[ ;]", req, 1)[0].lower() for req in extra}
    required = {m.split(".")[0] for f in (ROOT / "tests").glob("test_*.py") if f.name != "test_readme.py" for m in re.findall(r'require\("([\w.]+)"\)', f.read_text())}
    assert required and required <= names, f"not in the test extra: {sorted(required - names)}"
    assert 'export CI=' in (ROOT / ".ci" / "run").read_text(), "CI must set CI so unrunnable checks fail"


def test_unrunnable_check_fails_under_ci(monkeypatch):
    import pytest
    from helpers import require, shared_path

    monkeypatch.setenv("CI", "1")
    for check in (lambda: require("facerig_no_such_module"), lambda: shared_path("no", "such", "file")):
        with pytest.raises(pytest.fail.Exception, match="CI is set"):
            check()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require("facerig_no_such_module")
