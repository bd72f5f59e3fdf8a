"""The pages in a real browser: nothing said on the console, nothing fetched, charts drawn, numbers as stored."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from jnreg.registry.store import ModelStore
from jnreg.report.html import COLORS
from tests.helpers import run_jnreg
from tests.report_helpers import publish_version


@pytest.fixture(scope="module")
def store_with_versions(tmp_path_factory) -> tuple[ModelStore, list[str]]:
    """Two published versions evaluated on the same rows, the second in service."""
    work = tmp_path_factory.mktemp("pages")
    store = ModelStore(work / "store")
    first = publish_version(store, work, steps=40, rows=12, seed=1)
    second = publish_version(store, work, steps=60, rows=12, seed=2)
    store.promote("synthesizer", first)
    store.rollback("synthesizer")
    return store, [first, second]


def documents(store: ModelStore, agent: str) -> dict[str, Any]:
    """What the page's tagged numbers are read from, by the first part of their key."""
    version = store.current(agent)
    manifest = store.manifest(agent, version)
    evaluations = {d["id"]: d for label in store.version_labels(agent) for d in store.evaluations(agent, label)}
    return {
        "manifest": manifest,
        "summary": manifest["training_summary"],
        "log": json.loads(store.version_file(agent, version, "training_log.json")),
        "evaluations": evaluations,
    }


def lookup(tree: Any, key: str) -> Any:
    for part in key.split("/"):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def shown_as(value: Any, text: str) -> bool:
    """The text the page shows is the value, to the four significant digits it prints."""
    if value is None:
        return text == "–"
    if isinstance(value, str):
        return text == value
    number = float(text.replace(",", ""))
    return math.isclose(number, value, rel_tol=5e-4, abs_tol=1e-12)


def open_page(browser, path: Path):
    page = browser.open(path.resolve().as_uri())
    assert page.console() == []
    assert page.requests() == [path.resolve().as_uri()], "the page asked for something besides itself"
    return page


def test_version_page_shows_the_stored_numbers_and_draws_its_curves(browser, store_with_versions, tmp_path):
    store, (first, second) = store_with_versions
    out = tmp_path / "page.html"
    done = run_jnreg("--store-root", str(store.root), "report", "synthesizer", "--out", str(out))
    assert done.returncode == 0, done.stderr
    beside = store.root / "synthesizer" / "reports" / f"{second}.html"
    assert beside.read_bytes() == out.read_bytes() and f"report of synthesizer {second}" in done.stdout
    assert store.verify().ok  # the page sits beside the version; the version is unchanged

    page = open_page(browser, out)
    stored = documents(store, "synthesizer")
    tagged = page.tagged_values()
    for key, exact, text in tagged:
        if key.endswith("/failed"):
            continue
        root, _, rest = key.partition("/")
        assert exact == lookup(stored[root], rest), key
        assert shown_as(exact, text.strip()), (key, exact, text)
    keys = {key for key, _, _ in tagged}
    log = stored["log"]["steps"]
    table = page.evaluate(
        "[...document.querySelectorAll('#steps tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    columns = page.evaluate("[...document.querySelectorAll('#steps thead th')].map(c => c.textContent)")
    assert len(table) == len(log)
    for entry, cells in zip(log, table, strict=True):
        for column, text in zip(columns, cells, strict=True):
            assert shown_as(entry[column], text) if column in entry else text == "", (entry, column, text)
    assert {f"summary/metrics/{name}" for name in stored["summary"]["metrics"]} <= keys
    assert {f"summary/dataset/{name}" for name in ("rows", "eval_rows", "rows_skipped", "supervised_tokens")} <= keys
    own = store.evaluations("synthesizer", second)[0]
    other = store.evaluations("synthesizer", first)[0]
    assert {f"evaluations/{own['id']}/metrics/{n}" for n in own["metrics"]} <= keys
    assert {f"evaluations/{other['id']}/metrics/{n}" for n in other["metrics"]} <= keys  # the comparison
    rows = store.evaluation_rows("synthesizer", second, own)
    bad = [r["index"] for r in rows if r["json"] is False or r["schema_valid"] is False]
    assert [exact for key, exact, _ in tagged if key == f"evaluations/{own['id']}/failed"] == bad
    text = page.evaluate("document.body.innerText")
    assert "'key_points' is a required property" in text and "Sure! here is" in text and "not JSON" in text
    assert "not signed" in text and stored["manifest"]["digest"] in text
    config = json.loads(store.version_file("synthesizer", second, "jnreg_config.json"))
    shown = page.evaluate("[...document.querySelectorAll('#config tr')].map(r => [...r.cells].map(c => c.textContent))")
    assert ["adapter_r", str(config["adapter_r"])] in shown and ["seed", str(config["seed"])] in shown
    assert "rollback: put in service" in text and "put in service" in text

    width, height, pixels = page.screenshot('figure[data-chart="loss"] svg')
    assert (width, height) == (560, 220)
    curve = [p for p in pixels if p == tuple(int(COLORS["loss"][i : i + 2], 16) for i in (1, 3, 5))]
    assert len(curve) > 300, "the loss curve is not drawn"
    assert len(set(pixels)) > 20

    page.hover('figure[data-chart="loss"] svg', 0.5)
    tip = page.evaluate("document.querySelector('figure[data-chart=loss] .tip').textContent")
    shown, step = re.search(r"(?:^|· )loss ([-0-9.e+]+) @ step (\d+)", tip).groups()
    entry = next(e for e in log if e["step"] == int(step) and "loss" in e)
    assert math.isclose(float(shown), entry["loss"], rel_tol=5e-4), tip
    assert page.console() == []


def test_overview_links_every_version_page_and_all_open_cleanly(browser, store_with_versions, tmp_path):
    store, (first, second) = store_with_versions
    out = tmp_path / "overview"
    done = run_jnreg("--store-root", str(store.root), "store", "report", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert sorted(Path(p).name for p in written["pages"]) == sorted([f"{first}.html", f"{second}.html"])
    page = open_page(browser, out / "index.html")
    links = page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
    targets = {link for link in links if not link.startswith("#")}
    assert targets == {f"synthesizer/{first}.html", f"synthesizer/{second}.html"}
    text = page.evaluate("document.querySelector('#agents').innerText")
    history = store.history("synthesizer")
    assert second in text and history[-1]["when"] in text  # in service since the rollback
    latest = store.evaluations("synthesizer", second)[-1]
    tagged = {key: exact for key, exact, _ in page.tagged_values()}
    assert tagged["overview/synthesizer/json_rate"] == latest["metrics"]["json_rate"]
    for target in sorted(targets):
        linked = open_page(browser, out / target)
        assert linked.evaluate("document.querySelectorAll('figure[data-chart] polyline').length") >= 3


def test_the_browser_check_sees_console_errors_and_requests_that_leave_the_page(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!doctype html><html><body><img src='http://127.0.0.1:9/x.png'>"
        "<script>console.error('broken chart')</script></body></html>"
    )
    page = browser.open(bad.as_uri())
    assert "console.error: broken chart" in page.console()
    assert "http://127.0.0.1:9/x.png" in page.requests()


def test_report_commands_import_no_torch_and_fail_in_one_line(store_with_versions, tmp_path):
    from tests.helpers import heavy_imports_after

    store, _ = store_with_versions
    root = str(store.root)
    assert heavy_imports_after(["--store-root", root, "report", "synthesizer", "--out", str(tmp_path / "p.html")]) == []
    assert heavy_imports_after(["--store-root", root, "store", "report", "--out", str(tmp_path / "o")]) == []
    for args, message in [
        (["report", "synthesizer", "v999"], "v999"),
        (["report", "synthesizer", "--out", str(tmp_path / "no" / "such" / "dir" / "p.html")], "cannot write"),
        (["report", "nobody"], "nobody"),
    ]:
        done = run_jnreg("--store-root", root, *args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_promote_and_rollback_rewrite_the_pages_they_change(tmp_path):
    store = ModelStore(tmp_path / "store")
    first = publish_version(store, tmp_path, steps=5, rows=3, seed=1, evaluate=False)
    second = publish_version(store, tmp_path, steps=5, rows=3, seed=2, evaluate=False)
    root = str(store.root)
    for version in (first, second):
        assert run_jnreg("--store-root", root, "report", "synthesizer", version).returncode == 0

    def in_service(version: str) -> bool:
        return b'class="badge">in service' in store.read_report("synthesizer", version)

    assert in_service(second) and not in_service(first)
    assert run_jnreg("--store-root", root, "store", "rollback", "synthesizer").returncode == 0
    assert in_service(first) and not in_service(second)
    assert b"rollback: put in service" in store.read_report("synthesizer", first)
    assert run_jnreg("--store-root", root, "store", "promote", "synthesizer", second).returncode == 0
    assert in_service(second) and not in_service(first)
