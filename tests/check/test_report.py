"""The report files of `edgetl check`, written without a device: what CI and people pick up."""

import os
import stat

import pytest

from edgetl.check import ERROR, Result, report


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_junit_xml_gets_the_same_mode_as_the_other_report_files(tmp_path, umask_022):
    results = [Result("bench", "host-cpu", "local", False, "signs", ERROR, error="bench: no answer in 5 s")]
    written = report.write(results, tmp_path / "report", tmp_path / "ci" / "junit.xml")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes == {"report.json": 0o644, "report.html": 0o644, "junit.xml": 0o644}  # the umask's, not 0600
    assert b'<error message="bench: no answer in 5 s"' in (tmp_path / "ci" / "junit.xml").read_bytes()
    assert sorted(p.name for p in (tmp_path / "ci").iterdir()) == ["junit.xml"]  # no temp file left beside it
    report.write(results, None, tmp_path / "ci" / "junit.xml")  # replaced in place, same mode
    assert stat.S_IMODE((tmp_path / "ci" / "junit.xml").stat().st_mode) == 0o644
