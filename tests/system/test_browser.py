"""The operator's view in a real browser: a worker on the real broker, events sent with `stream-app produce`,
/dashboard and /users/<id> opened in headless Chromium (Debian's `chromium`), screenshots kept as artefacts.

Artefacts: artifacts/browser/{dashboard-1,dashboard-2,user}.png (git-ignored; the paths are printed).
Skips with its reason when no Chromium is installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from html import unescape
from pathlib import Path

import pytest

from stream_app.sample_data import load_catalogue
from stream_app.settings import Settings
from stream_app.stream.process import private_env, start_worker

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"
BASE_TS = 1767225600


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def browse(url: str, *, screenshot: Path | None = None, height: int = 1500) -> str:
    """The DOM after the page's scripts ran (and a screenshot of it when asked)."""
    exe = chromium()
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--window-size=1400,{height}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
        print(f"screenshot: {screenshot}")
    return dom


def text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"#{element_id} not in the page"
    return unescape(match.group(1))


def number(text: str) -> int:
    return int(text.replace(",", ""))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"}), timeout=10) as r:
        return json.loads(r.read())


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120, check=True)


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory):
    if chromium() is None:
        pytest.skip("no Chromium (apt-get install -y chromium; .ci/run does it when missing)")
    data = tmp_path_factory.mktemp("browser-worker")
    env = private_env("ui", kafka_bootstrap, data, STREAM_APP_TOPIC_PARTITIONS="2")
    w = start_worker(env, data)
    try:
        catalogue = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in load_catalogue())
        sent = cli(env, "produce", "-", stdin=catalogue)
        assert "sent" in sent.stdout and "skipped" not in sent.stdout, sent.stdout
        n_items = len(load_catalogue())
        w.wait_until(lambda: (w.stats() or {}).get("items_indexed", 0) >= n_items, 300, "indexing")
        # The catalogue size is the store's own count, refreshed by the sampler once the store was written to.
        w.wait_until(lambda: ((w.stats() or {}).get("catalogue_size") or 0) >= n_items, 30, "the catalogue count")
        yield w
    finally:
        w.stop()
        log_text = w.log_text()
        assert "\x1b[" not in log_text and "\r" not in log_text, "terminal control codes in the worker's log file"


def events_for(user: str, titles: list[str], start_minute: int) -> str:
    by_title = {i["title"]: i["item_id"] for i in load_catalogue()}
    lines = []
    for n, title in enumerate(titles):
        item = next(v for k, v in by_title.items() if title in k)
        lines.append(json.dumps({"event_id": f"{user}-{uuid.uuid4().hex[:6]}", "user_id": user,
                                 "type": "purchase" if n == len(titles) - 1 else "view", "item_id": item,
                                 "ts": BASE_TS + 60 * (start_minute + n)}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def test_dashboard_moves_and_the_user_page_explains(worker):
    env, web = worker.env, worker.web
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    user = f"小明-{uuid.uuid4().hex[:4]}"
    cli(env, "produce", "-", stdin=events_for("warmup", ["Hoka Clifton 9", "Brooks Ghost 16"], 0))
    worker.wait_until(lambda: (worker.stats() or {}).get("recommendations", 0) >= 1, 60, "a first list")

    first = browse(f"{web}/dashboard", screenshot=ARTIFACTS / "dashboard-1.png")
    events_1, lists_1 = number(text_of(first, "events-total")), number(text_of(first, "recs-total"))
    assert text_of(first, "health") == "serving"
    assert text_of(first, "model").startswith(env.get("STREAM_APP_MODEL_NAME", "multilingual-e5-small"))
    assert number(text_of(first, "catalogue")) > 0

    titles = ["华为 Mate 60 Pro", "FreeBuds", "Anker"]
    cli(env, "produce", "-", stdin=events_for(user, titles, 10))
    worker.wait_until(lambda: (worker.stats() or {}).get("events", 0) >= events_1 + len(titles), 60,
                      "the user's events")
    time.sleep(2.5)  # one more sample for the charts

    second = browse(f"{web}/dashboard", screenshot=ARTIFACTS / "dashboard-2.png")
    assert number(text_of(second, "events-total")) >= events_1 + len(titles)
    assert number(text_of(second, "recs-total")) > lists_1
    assert "<polyline" in second  # the charts drew lines
    assert user in second  # the latest lists name the user

    page = browse(f"{web}/users/{urllib.parse.quote(user)}", screenshot=ARTIFACTS / "user.png", height=1300)
    data = get_json(f"{web}/users/{urllib.parse.quote(user)}?format=json")
    assert data["events"] == len(titles) and len(data["behaviours"]) == len(titles)
    for b in data["behaviours"]:
        assert b["title"] and unescape(page).count(b["title"]) >= 1  # the user's items, by title
        for a in b["attention"]:
            assert f"{a:.2f}" in page  # and their attention weight in each slot
        assert abs(sum(x["attention"][0] for x in data["behaviours"] if x["attention"]) - 1.0) < 1e-3
    assert all(w["because"] and w["title"] for w in data["why"])
    cold_support = Settings().blend_cold_support  # the worker's environment is this one's plus private topics
    for w in data["why"]:  # an item the counters know little about says so, a known one does not
        assert ("little known" in w["because"]) == (w["why"]["support"] < cold_support), w
    assert "Recent behaviour and its attention weight" in page

    shown = cli(env, "tail", "recommendations", "--user", user, "--from-beginning", "-n", "1", "--idle", "20").stdout
    assert shown.splitlines()[0].split()[1] == user and " 1. " in shown
    explained = cli(env, "explain", user).stdout
    assert all(b["title"] in explained for b in data["behaviours"])
    print(f"artefacts: {', '.join(str(p) for p in sorted(ARTIFACTS.glob('*.png')))}")
