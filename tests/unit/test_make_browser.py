"""`make test` gets the `ui` tests' headless Chromium by itself (Debian's, as root) or says in one line
what to install before any test runs. `apt-get`, `id` and the browser are stand-ins on a PATH that
holds nothing else, so the real system is neither used nor changed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
CHMOD = shutil.which("chmod")  # the stand-in apt-get runs on a PATH without it
VENV_STAMP = ".venv/bin/pricing"  # `install`'s file: -o keeps make from reinstalling the venv


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture()
def shims(tmp_path: Path) -> Path:
    """A PATH with only `id` (uid from $FAKE_UID) and `apt-get` (logs its arguments; `install
    chromium` puts a `chromium` next to it unless $APT_FAILS)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(
        bin_dir / "id", 'if [ "$1" = -u ]; then echo "$FAKE_UID"; else echo "uid=$FAKE_UID"; fi\n'
    )
    _script(
        bin_dir / "apt-get",
        f'echo "$*" >> {tmp_path}/apt.log\n'
        '[ -n "$APT_FAILS" ] && [ "$1" = install ] && exit 100\n'
        'if [ "$1" = install ] && [[ " $* " == *" chromium "* ]]; then\n'
        f'  printf "#!/bin/bash\\n" > {bin_dir}/chromium; {CHMOD} +x {bin_dir}/chromium\n'
        "fi\n"
        "exit 0\n",
    )
    return bin_dir


def _make(shims: Path, *targets: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert MAKE is not None, "no `make` on PATH: README's test command is `make test`"
    base = {k: v for k, v in os.environ.items() if k not in {"PRICING_CHROMIUM", "MAKEFLAGS"}}
    return subprocess.run(
        [MAKE, "-s", "-C", str(ROOT), "-o", VENV_STAMP, *targets],
        env={**base, "PATH": str(shims), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _apt_calls(shims: Path) -> list[str]:
    log = shims.parent / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_not_root_without_a_browser_says_in_one_line_what_to_install(shims: Path) -> None:
    out = _make(shims, "browser", FAKE_UID="1000")
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "apt-get install -y chromium" in errors[0], out.stderr
    assert "PRICING_CHROMIUM" in errors[0]
    assert _apt_calls(shims) == []  # nothing installed without root


def test_root_installs_debians_chromium_when_none_is_found(shims: Path) -> None:
    out = _make(shims, "browser", FAKE_UID="0")
    assert out.returncode == 0, out.stderr
    assert any(c.startswith("install") and "chromium" in c.split() for c in _apt_calls(shims))
    assert (shims / "chromium").exists()
    again = _make(shims, "browser", FAKE_UID="0")  # found now: apt-get is not called again
    assert again.returncode == 0 and len(_apt_calls(shims)) == 2  # update + install, once


def test_a_browser_already_there_is_used_as_is(shims: Path) -> None:
    _script(shims / "google-chrome", "")
    assert _make(shims, "browser", FAKE_UID="0").returncode == 0
    assert _apt_calls(shims) == []


def test_a_failed_install_ends_in_the_same_one_line(shims: Path) -> None:
    out = _make(shims, "browser", FAKE_UID="0", APT_FAILS="1")
    assert out.returncode != 0
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("error:")], out.stderr


def test_make_test_checks_the_browser_before_running_pytest(shims: Path) -> None:
    plan = _make(shims, "-n", "test", FAKE_UID="0").stdout.splitlines()
    browser = next(i for i, line in enumerate(plan) if "browser.chromium()" in line)
    pytest_run = next(i for i, line in enumerate(plan) if "bin/pytest" in line)
    assert browser < pytest_run
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci  # CI runs the same command, so it gets the browser the same way
