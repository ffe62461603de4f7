"""A real browser for pages memprobe writes: Debian's chromium, headless, with no network."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Every request fails: a proxy on a closed port, and no name resolves.
NO_NETWORK = ("--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND")


def chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


@dataclass(frozen=True)
class Rendered:
    dom: str
    screenshot: Path
    seconds: float  # loading, running the page's scripts and dumping the DOM


def render(page: Path, screenshot: Path, *, width: int = 1400, height: int = 3800) -> Rendered:
    """Load ``page`` in headless chromium without network; the DOM after its scripts ran, and a screenshot."""
    browser = chromium()
    assert browser is not None
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *NO_NETWORK,
              "--virtual-time-budget=15000", f"--window-size={width},{height}"]  # fmt: skip
    started = time.perf_counter()
    dom = subprocess.run([*common, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    seconds = time.perf_counter() - started
    subprocess.run([*common, f"--screenshot={screenshot}", page.resolve().as_uri()], capture_output=True,
                   timeout=120, check=True)  # fmt: skip
    return Rendered(dom, screenshot, seconds)
