"""Headless Chromium for `make screenshots` and the `ui` tests: a page's DOM after its JavaScript ran,
or a PNG of it.

Every host but loopback resolves to nothing (`--host-resolver-rules`), so a page that needs a CDN
renders here as it would offline. `--virtual-time-budget` lets single-page apps (MLflow, Prefect,
Swagger UI) fetch and render before the DOM is read: Chromium's virtual clock waits for pending
requests. Chromium comes from the system (Debian's `chromium` package) or `PRICING_CHROMIUM`.

    python infra/local/browser.py dom URL
    python infra/local/browser.py shot URL OUT.png [--size 1400x900] [--max-width 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_MISSING = (
    "no headless Chromium found: install Debian's `chromium` package (`apt-get install -y "
    "chromium`; `make test` does as root) or point PRICING_CHROMIUM at a Chromium or Chrome binary"
)
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Offline by construction: nothing but loopback resolves. `ui.localhost` is loopback too, under a
# name that is not `localhost`: MLflow's UI opens its Assistant panel on a page served from
# localhost or 127.0.0.1 the first time a browser profile sees it (a person closes it once; every
# headless run is a first time), so pages photographed through `ui.localhost` show the page itself.
UI_HOST = "ui.localhost"
_OFFLINE = f"MAP {UI_HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"
# What an MLflow server must accept to be reached through UI_HOST (its defaults are loopback and
# private addresses): the Host header and the origin of the UI's POST requests.
MLFLOW_UI_HOST_ENV = {
    "MLFLOW_SERVER_ALLOWED_HOSTS": f"localhost,127.0.0.1,localhost:*,127.0.0.1:*,{UI_HOST}:*",
    "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": f"http://{UI_HOST}:*",
}


def via_ui_host(url: str) -> str:
    """`url` on 127.0.0.1 or localhost, reached through UI_HOST instead."""
    for host in ("//127.0.0.1:", "//localhost:"):
        url = url.replace(host, f"//{UI_HOST}:", 1)
    return url


def chromium() -> str | None:
    """The Chromium binary: $PRICING_CHROMIUM, else the first of the usual names on PATH."""
    if env := os.environ.get("PRICING_CHROMIUM"):
        return env if shutil.which(env) else None
    return next((p for n in _NAMES if (p := shutil.which(n))), None)


class BrowserError(RuntimeError):
    """Chromium is missing, timed out, or exited without output."""


def _run(
    url: str, action: list[str], size: tuple[int, int], budget_ms: int, timeout_s: float
) -> str:
    binary = chromium()
    if binary is None:
        raise BrowserError(CHROMIUM_MISSING)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        argv = [
            binary,
            "--headless",
            "--no-sandbox",  # containers and CI run as root, where the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-device-scale-factor=1",
            f"--host-resolver-rules={_OFFLINE}",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={budget_ms}",
            *action,
            url,
        ]
        # A session of its own: on a timeout the renderer and GPU processes go with the browser.
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BrowserError(f"chromium did not finish {url} in {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited {proc.returncode} on {url}: {err[-2000:]}")
    return out


def dump_dom(
    url: str,
    *,
    size: tuple[int, int] = (1400, 900),
    budget_ms: int = 20_000,
    timeout_s: float = 120,
) -> str:
    """The serialized DOM of `url` once its scripts ran (and its requests settled)."""
    dom = _run(url, ["--dump-dom"], size, budget_ms, timeout_s)
    if not dom.strip():
        raise BrowserError(f"chromium returned an empty DOM for {url}")
    return dom


def screenshot(
    url: str,
    out: str | Path,
    *,
    size: tuple[int, int] = (1400, 900),
    max_width: int = 1000,
    crop: tuple[int, int, int, int] | None = None,
    budget_ms: int = 20_000,
    timeout_s: float = 120,
) -> Path:
    """A PNG of `url`'s first `size` pixels, scaled down to `max_width` and palette-quantized (a
    README image of 50-250 KB rather than 1 MB). `crop` (left, top, right, bottom, in window
    pixels) keeps a part of the window: a narrow page's text rather than its empty margin."""
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shot-") as tmp:
        raw = Path(tmp) / "raw.png"
        _run(url, [f"--screenshot={raw}"], size, budget_ms, timeout_s)
        if not raw.exists():
            raise BrowserError(f"chromium wrote no screenshot of {url}")
        with Image.open(raw) as img:
            rgb = img.convert("RGB")
        if crop:
            rgb = rgb.crop(crop)
        if rgb.width > max_width:
            rgb = rgb.resize((max_width, round(rgb.height * max_width / rgb.width)), Image.LANCZOS)
        rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _box(text: str) -> tuple[int, int, int, int]:
    left, top, right, bottom = (int(v) for v in text.split(","))
    return left, top, right, bottom


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dom", help="print the DOM after JavaScript ran")
    d.add_argument("url")
    s = sub.add_parser("shot", help="write a PNG of the page")
    s.add_argument("url")
    s.add_argument("out")
    s.add_argument("--size", type=_size, default=(1400, 900), help="window, WxH")
    s.add_argument("--max-width", type=int, default=1000, help="scale the PNG down to this width")
    s.add_argument("--crop", type=_box, help="keep LEFT,TOP,RIGHT,BOTTOM of the window")
    for q in (d, s):
        q.add_argument("--budget-ms", type=int, default=20_000, help="virtual time to render")
    args = p.parse_args(argv)
    try:
        if args.cmd == "dom":
            sys.stdout.write(dump_dom(args.url, budget_ms=args.budget_ms))
        else:
            screenshot(
                args.url,
                args.out,
                size=args.size,
                max_width=args.max_width,
                crop=args.crop,
                budget_ms=args.budget_ms,
            )
            print(args.out)
    except BrowserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
