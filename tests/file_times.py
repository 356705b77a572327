"""Where the suite's time goes, by file: summed setup + call + teardown of each test file, printed
at the end of the run (CI's log), so the files that decide the suite's length are known. Under
pytest-xdist the controller hears every report, so the sums cover both processes."""

from __future__ import annotations

from collections import Counter

import pytest

SHOWN = 15


class FileTimes:
    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid.split("::")[0]] += report.duration

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.seconds:
            return
        total = sum(self.seconds.values())
        terminalreporter.write_sep("=", f"slowest {SHOWN} test files (of {total:.0f} s summed over the processes)")
        for path, seconds in self.seconds.most_common(SHOWN):
            terminalreporter.write_line(f"{seconds:8.1f}s  {path}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(FileTimes(), "file-times")
