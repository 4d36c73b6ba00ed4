"""examples/ci/: the GitHub Actions workflow and the GitLab CI job parse, and every edgetl command and
pytest option they name exists (a CI file that rots is found here, not in a user's pipeline)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgetl.cli import build_parser

CI = Path(__file__).parent.parent / "examples" / "ci"


def _scripts(doc: dict) -> list[str]:
    """Every shell line of a workflow's `run:` steps or a GitLab job's `script:`, continuations joined."""
    lines = []
    for job in doc.values():
        if not isinstance(job, dict):
            continue
        for step in job.get("steps", []):
            if "run" in step:
                lines += step["run"].replace("\\\n", " ").splitlines()
        for key in ("before_script", "script", "after_script"):
            lines += job.get(key, [])
    if "jobs" in doc:
        lines += _scripts(doc["jobs"])
    return [line.strip() for line in lines if line.strip()]


@pytest.fixture(scope="module", params=["github-actions.yml", "gitlab-ci.yml"])
def lines(request) -> list[str]:
    return _scripts(yaml.safe_load((CI / request.param).read_text()))


def _argv(line: str) -> list[str]:
    return [w for w in shlex.split(line) if not w.startswith("$")]  # shell variables: flags checked below


def test_each_runs_the_pipeline_and_the_plugin_gated_on_a_baseline_and_keeps_the_reports(lines):
    text = "\n".join(lines)
    assert any(line.startswith("edgetl pipeline ") for line in lines)
    assert any(line.startswith("pytest ") and "--edgetl-devices" in line for line in lines)
    assert "--edgetl-baseline" in text and "--junit-xml" in text and "--edgetl-report" in text


def test_every_edgetl_command_parses(lines):
    parser = build_parser()
    commands = [line for line in lines if line.startswith("edgetl ")]
    assert commands
    for line in commands:
        parser.parse_args(_argv(line)[1:])  # SystemExit (argparse's error) on a command or flag that is gone


def test_every_pytest_option_exists():
    helped = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], capture_output=True,
                            text=True, cwd=CI).stdout
    for name in ("github-actions.yml", "gitlab-ci.yml"):
        text = (CI / name).read_text()
        for flag in set(re.findall(r"(?<![\w-])(--(?:edgetl-[\w-]+|dist|junit-xml))", text)) | {"-n"}:
            assert re.search(rf"(?<![\w-]){flag}[ =,]", helped), f"{name}: pytest has no {flag}"
