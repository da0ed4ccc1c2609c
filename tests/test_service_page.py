"""The search page at ``/``, driven in headless Chromium against a real ``nestemb serve``.

Why: the page is the service's only user interface; the test checks that what a user sees (hit
ids, plan, per-stage timings, error messages) is exactly what the HTTP API answers for the same
request, and that both equal an independent numpy search over MiniLM vectors computed in this
process. It also writes ``runs/service/page.png`` for a human look.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
N_DOCS = 300
MAX_CHARS = 400
"""Documents are cut to their first 400 characters (title and the abstract's start): embedding
300 full abstracts twice (server and reference) would take ~30 s of the test's CPU budget."""
COLL = "scifact"
WAIT_S = 30.0
WRITE_KEY = "page-test-write-key-0001"
READ_KEY = "page-test-read-key-0002"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"headless Chromium not installed ({CHROMIUM} and {CHROMEDRIVER}; Debian packages "
           "chromium and chromium-driver)")


# ----------------------------------------------------------------------------- reference
def _funnel(X: np.ndarray, q: np.ndarray, dims: list[int], shortlist: list[int],
            k: int) -> list[int]:
    """Row indices of the top-k under a funnel plan, by plain float64 cosine on prefixes
    (a single stage of the full dim is the brute-force search)."""
    X, q = X.astype(np.float64), q.astype(np.float64)
    rows = np.arange(len(X))
    keeps = [max(k, min(s, len(X))) for s in shortlist] + [min(k, len(X))]
    for d, keep in zip(dims, keeps):
        cand = X[rows, :d]
        s = cand @ q[:d] / (np.linalg.norm(cand, axis=1) * np.linalg.norm(q[:d]))
        rows = rows[np.argsort(-s, kind="stable")[:keep]]
    return rows.tolist()


def _scifact_slice(folder: Path) -> tuple[list[str], list[str], list[str], str]:
    """First N_DOCS corpus docs (ids, title + " " + text cut to MAX_CHARS, titles) and a test
    query whose relevant doc is among them."""
    from nestemb.data.beir import load_beir

    ids, texts, titles = [], [], []
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            ids.append(str(doc["_id"]))
            titles.append(doc.get("title") or "")
            texts.append(f"{doc.get('title') or ''} {doc['text']}".strip()[:MAX_CHARS])
            if len(ids) == N_DOCS:
                break
    data = load_beir(folder, "test")
    have = set(ids)
    qid = next(q for q, docs in data.qrels.items() if have & set(docs))
    return ids, texts, titles, data.queries[qid]


# ----------------------------------------------------------------------------- browser
@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The search page's controls, by the ids the page promises."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.d = driver
        self.wait = WebDriverWait(driver, WAIT_S)
        driver.get(url + "/")

    def by_id(self, id_: str):
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.ID, id_)

    def select_collection(self, name: str) -> None:
        from selenium.webdriver.support.ui import Select

        self.wait.until(lambda d: any(o.get_attribute("value") == name for o in
                                      Select(self.by_id("collection")).options))
        Select(self.by_id("collection")).select_by_value(name)
        self.wait.until(lambda d: self.by_id("info").get_attribute("data-loaded") == name)

    def type_query(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.by_id("query")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        if text:
            box.send_keys(text)

    def set_k(self, k: int) -> None:
        box = self.by_id("k")
        box.clear()
        box.send_keys(str(k))

    def budget(self, mode: str) -> None:
        from selenium.webdriver.common.by import By

        self.d.find_element(By.CSS_SELECTOR, f"label[for=budget-{mode}]").click()
        assert self.by_id(f"budget-{mode}").is_selected()

    def slide_to(self, index: int) -> None:
        """Move the dims slider with the keyboard, as a user would."""
        from selenium.webdriver.common.keys import Keys

        slider = self.by_id("dims")
        slider.send_keys(Keys.HOME)
        for _ in range(index):
            slider.send_keys(Keys.ARROW_RIGHT)
        assert slider.get_attribute("value") == str(index)

    def search(self) -> None:
        before = int(self.by_id("results").get_attribute("data-searches"))
        self.by_id("search").click()
        self.wait.until(lambda d: int(self.by_id("results").get_attribute("data-searches"))
                        > before)

    def request(self) -> dict:
        return json.loads(self.by_id("request").get_attribute("textContent"))

    def hits(self) -> list[tuple[Any, str, float, str]]:
        """(id from data-id, visible id, score, payload text) per row."""
        from selenium.webdriver.common.by import By

        out = []
        for row in self.d.find_elements(By.CSS_SELECTOR, "#hits tbody tr"):
            cells = row.find_elements(By.TAG_NAME, "td")
            out.append((json.loads(row.get_attribute("data-id")), cells[1].text,
                        float(cells[2].text), cells[3].text))
        return out

    def timing_rows(self) -> list[list[str]]:
        from selenium.webdriver.common.by import By

        return [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
                for r in self.d.find_elements(By.CSS_SELECTOR, "#timing tbody tr.step")]


# ----------------------------------------------------------------------------- the test
def test_search_page_matches_api_and_numpy(shared_data: Path, tmp_path: Path, browser) -> None:
    import httpx

    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from harness.server import running_server
    from nestemb.text.encoder import load_text_model

    folder = shared_data / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found in {folder}")
    ids, texts, titles, query = _scifact_slice(folder)
    keys = [{"key": WRITE_KEY, "access": "admin", "collections": ["*"]},
            {"key": READ_KEY, "access": "read", "collections": [COLL, "vecs"]}]
    with running_server(tmp_path / "data", api_keys=keys) as (url, _), httpx.Client(
            base_url=url, timeout=60, headers={"X-API-Key": WRITE_KEY}) as http:
        r = http.put(f"/collections/{COLL}", json={"encoder": "minilm"})
        assert r.status_code == 200, r.text
        nesting, full = r.json()["nesting"], r.json()["dim"]
        assert nesting == [32, 64, 128, 256, 384] and full == 384
        points = [{"id": i, "text": t, "payload": {"title": ti}}
                  for i, t, ti in zip(ids, texts, titles)]
        r = http.put(f"/collections/{COLL}/points", json={"points": points})
        assert r.json() == {"upserted": N_DOCS}, r.text
        r = http.put("/collections/vecs", json={"nesting": [2, 4]})
        assert r.status_code == 200, r.text
        V = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 0.2, 0, 1]], dtype=float)
        r = http.put("/collections/vecs/points", json={"points": [
            {"id": n, "vector": v.tolist(), "payload": {"n": n}} for n, v in enumerate(V)]})
        assert r.json() == {"upserted": 4}, r.text

        # the independent reference: the same texts embedded in this process
        enc = load_text_model("minilm")
        X = enc.encode(texts)
        q = enc.encode([query])[0]

        # recall targets map to the tuned plan: wait for the background tuning of 300 points
        deadline = time.monotonic() + WAIT_S
        while (http.get(f"/collections/{COLL}").json()["index"]["tuning"] or {}).get(
                "count") != N_DOCS:
            assert time.monotonic() < deadline, "collection not tuned within 30 s"
            time.sleep(0.3)

        # 1. without a key the page shows the API's 401; with the read key typed in (and
        # kept in local storage) it lists the collections
        page = Page(browser, url)
        page.wait.until(lambda d: page.by_id("error").is_displayed())
        no_key = httpx.get(f"{url}/collections").json()["error"]
        assert no_key["status"] == 401 and no_key["field"] == "authorization"
        assert page.by_id("error-message").text == no_key["message"]
        assert page.by_id("error-status").text == "401"
        page.by_id("apikey").send_keys(READ_KEY, Keys.TAB)
        page.select_collection(COLL)
        assert not page.by_id("error").is_displayed()
        assert browser.execute_script("return localStorage.getItem('nestemb.apiKey')") \
            == READ_KEY
        info = page.by_id("info").text
        assert f"{N_DOCS}" in info and "[32, 64, 128, 256, 384]" in info and "minilm" in info
        assert page.by_id("query").is_displayed() and not page.by_id("vector").is_displayed()

        # 2. an error answer is shown with the API's own status, field and message
        page.type_query("")
        page.search()
        api_err = http.post(f"/collections/{COLL}/search", json=page.request())
        assert api_err.status_code == 422
        assert api_err.json()["error"]["field"] == "text"
        assert page.by_id("error").is_displayed()
        assert page.by_id("error-message").text == api_err.json()["error"]["message"] \
            == "text must not be empty"
        assert page.by_id("error-status").text == "422"
        assert page.by_id("error-field").text == "field: text"
        assert page.hits() == []

        # 3. hits, plan and timings equal the API's answer and the numpy reference
        cases = [  # (budget mode, slider index or recall, k, expected request budget)
            ("dims", 1, 10, {"dims": [64, 384]}),
            ("dims", len(nesting) - 1, 8, {"dims": [384]}),
            ("recall", "0.95", 10, {"recall": 0.95}),
        ]
        page.type_query(query)
        seen = []
        for mode, value, k, budget in cases:
            page.budget(mode)
            if mode == "dims":
                page.slide_to(value)
            else:
                Select(page.by_id("recall")).select_by_value(value)
            page.set_k(k)
            page.search()
            assert not page.by_id("error").is_displayed(), page.by_id("error").text
            body = {"text": query, "k": k, **budget}
            assert page.request() == body
            res = http.post(f"/collections/{COLL}/search", json=body)
            assert res.status_code == 200, res.text
            res = res.json()
            plan = res["plan"]
            if mode == "dims":
                assert plan["dims"] == budget["dims"] and plan["source"] == "request"
            else:
                assert plan["source"] == "tuned" and plan["expected_recall"] >= 0.95
            shown = page.hits()
            api_ids = [h["id"] for h in res["hits"]]
            ref_ids = [ids[r] for r in _funnel(X, q, plan["dims"], plan["shortlist"], k)]
            assert [h[0] for h in shown] == api_ids == ref_ids, (mode, value)
            assert [h[1] for h in shown] == api_ids  # the visible id text
            assert np.allclose([h[2] for h in shown], [h["score"] for h in res["hits"]],
                               atol=6e-5)
            assert [json.loads(h[3]) for h in shown] == [{"title": titles[ids.index(i)]}
                                                         for i in api_ids]
            assert json.loads(page.by_id("plan").get_attribute("data-plan")) == plan
            steps = page.timing_rows()
            assert steps[0][0] == "embed query"
            assert [int(s[1]) for s in steps[1:]] == plan["dims"]
            assert [s[0] for s in steps[1:]] == [f"stage {i + 1}" for i in
                                                 range(len(plan["dims"]))]
            assert int(steps[1][2].replace(",", "")) == N_DOCS
            seen.append((page.request(), page.hits()))

        # 4. a vectors-only collection takes a JSON vector in a text area
        page.select_collection("vecs")
        assert page.by_id("vector").is_displayed() and not page.by_id("query").is_displayed()
        page.by_id("vector").send_keys("[1, 0.1, 0, 0.5]")
        page.budget("dims")
        page.slide_to(0)
        page.set_k(3)
        page.search()
        assert page.request() == {"vector": [1, 0.1, 0, 0.5], "k": 3, "dims": [2, 4]}
        res = http.post("/collections/vecs/search", json=page.request()).json()
        assert [h[0] for h in page.hits()] == [h["id"] for h in res["hits"]] == \
            _funnel(V, np.array([1, 0.1, 0, 0.5]), [2, 4], [200], 3)

        # back to the SciFact search for the screenshot
        page.select_collection(COLL)
        page.budget("dims")
        page.slide_to(1)
        page.set_k(10)
        page.search()
        assert (page.request(), page.hits()) == seen[0]
        out = REPO / "runs" / "service"
        out.mkdir(parents=True, exist_ok=True)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page
            "width": 1280, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
        assert browser.save_screenshot(str(out / "page.png"))


# ----------------------------------------------------------------------------- migration
def test_page_shows_a_migration_and_searches_the_new_space(tmp_path: Path, browser) -> None:
    """A collection migrating to a new model (client vectors: the new model is a fixed linear
    image of the old one): the page's migration panel shows what ``GET .../migration`` says
    (state, backfilled share as a bar, map and probe agreement) and follows it (2 s polls);
    with the new model picked, a search is answered by the new space and the page says so."""
    import httpx

    from harness.server import running_server

    X = np.random.default_rng(0).normal(size=(200, 8))
    R = np.random.default_rng(1).normal(size=(8, 12))
    Y = X @ R
    with running_server(tmp_path / "data") as (url, _), httpx.Client(base_url=url,
                                                                      timeout=60) as http:
        assert http.put("/collections/mig", json={"nesting": [4, 8]}).status_code == 200
        r = http.put("/collections/mig/points", json={"points": [
            {"id": i, "vector": x.tolist(), "payload": {"n": i}} for i, x in enumerate(X)]})
        assert r.status_code == 200, r.text
        r = http.put("/collections/mig/migration", json={
            "nesting": [6, 12], "model_id": "v2", "sample_size": 60, "kind": "affine"})
        assert r.status_code == 200, r.text

        # 1. collecting: the panel shows the state, the new model cannot answer yet
        page = Page(browser, url)
        page.select_collection("mig")
        panel = page.by_id("migration")
        assert panel.is_displayed() and panel.get_attribute("data-state") == "collecting"
        assert page.by_id("mig-state").text == "collecting"
        assert page.by_id("mig-models").text.startswith("8-dim vectors → v2")
        assert page.by_id("mig-map").text == "not fitted yet: sample 0 of 60"
        assert page.by_id("model-set").is_displayed()
        assert page.by_id("model-new-name").text == "v2"
        assert not page.by_id("model-new").is_enabled()
        assert page.by_id("model-old").is_selected()

        # 2. the sample posted: the maps are fitted, 140 vectors mapped; the panel follows
        r = http.put("/collections/mig/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(60)]})
        assert r.status_code == 200, r.text
        page.wait.until(lambda d: panel.get_attribute("data-state") == "backfilling")
        page.wait.until(lambda d: page.by_id("model-new").is_enabled())
        st = http.get("/collections/mig/migration").json()
        assert st["state"] == "backfilling" and st["mapped"] == 140 and st["backfilled"] == 0.3
        assert float(panel.get_attribute("data-backfilled")) == st["backfilled"]
        assert page.by_id("mig-backfilled").text == "30.0 % (60 of 200 re-encoded, 140 mapped)"
        assert page.by_id("mig-progress").get_attribute("aria-valuenow") == "30.0"
        def bar_fraction(_driver) -> float:
            bar = browser.execute_script("return [arguments[0].offsetWidth, arguments[1].offsetWidth]",
                                         page.by_id("mig-bar"), page.by_id("mig-progress"))
            return bar[0] / bar[1]

        # the bar's width animates (CSS transition, 0.4 s): wait for it to settle at 30 %
        page.wait.until(lambda d: abs(bar_fraction(d) - 0.3) < 0.02, "the progress bar never settled at 30 %")
        assert page.by_id("mig-map").text.startswith(f"{st['map']['forward_quality']:.3f} (affine")
        page.wait.until(lambda d: page.by_id("mig-probe").text != "–")
        probe = http.get("/collections/mig/migration").json()["probe"]
        assert page.by_id("mig-probe").text.startswith(f"{probe['agreement']:.3f} (over 60 ")

        # 3. the new model picked: a 12-d query, answered by the new space, as the API answers
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        browser.find_element(By.CSS_SELECTOR, "label[for=model-new]").click()
        assert page.by_id("model-new").is_selected()
        assert "12 numbers" in page.by_id("vector-hint").text
        q = [round(v, 4) for v in Y[7].tolist()]
        page.by_id("vector").send_keys(json.dumps(q))
        page.budget("dims")
        page.slide_to(0)
        page.set_k(3)
        page.search()
        assert not page.by_id("error").is_displayed(), page.by_id("error").text
        assert page.request() == {"vector": q, "model": "new", "k": 3, "dims": [6, 12]}
        res = http.post("/collections/mig/search", json=page.request()).json()
        assert res["migration"]["space"] == "new"
        assert page.by_id("results").get_attribute("data-space") == "new"
        assert page.by_id("space").text == "answered by the new model (v2)"
        assert [h[0] for h in page.hits()] == [h["id"] for h in res["hits"]]
        assert page.hits()[0][0] == 7

        # ... and the old model again: an 8-d query, answered by the old space
        browser.find_element(By.CSS_SELECTOR, "label[for=model-old]").click()
        box = page.by_id("vector")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(json.dumps([round(v, 4) for v in X[7].tolist()]))
        page.search()
        assert page.request()["model"] == "old" and page.request()["dims"] == [4, 8]
        assert page.by_id("results").get_attribute("data-space") == "old"
        assert page.by_id("space").text == "answered by the old model (8-dim vectors)"
        assert page.hits()[0][0] == 7

        # 4. every vector posted: complete; finished: the panel goes, the collection is v2's
        r = http.put("/collections/mig/migration/vectors", json={"points": [
            {"id": i, "vector": Y[i].tolist()} for i in range(60, 200)]})
        assert r.status_code == 200, r.text
        page.wait.until(lambda d: page.by_id("mig-state").text == "backfilling · complete")
        assert page.by_id("mig-backfilled").text.startswith("100.0 %")
        out = REPO / "runs" / "service"
        out.mkdir(parents=True, exist_ok=True)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page
            "width": 1280, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
        assert browser.save_screenshot(str(out / "page-migration.png"))
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        assert http.post("/collections/mig/migration/finish").status_code == 200
        page.wait.until(lambda d: not panel.is_displayed())
        page.wait.until(lambda d: "[6, 12]" in page.by_id("info").text)
        assert not page.by_id("model-set").is_displayed()
        assert "v2" in page.by_id("info").text
