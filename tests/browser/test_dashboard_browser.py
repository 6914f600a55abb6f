"""Real-browser test of the dashboard: `steerlab dashboard` on the embedded default model, driven by
Debian's chromium through Playwright (no browser download: ``executable_path=/usr/bin/chromium``).

Opens every page by its own URL (``/generate``, ``/sampling``, ...; the first request of the fresh server
is ``/generate``), then performs one action per page, checks the rendered text and plotly figures, checks
that no exception box and no error message appears, and saves one screenshot per page to
``runs/screenshots/`` (``$STEERLAB_SCREENSHOTS=docs/screenshots`` refreshes the README's). Prints the
cold start: seconds from starting the server process to a usable Generate page (model loaded, Generate
button enabled); ``STEERLAB_RECORD=1`` also writes it to ``docs/records/dashboard_cold_start.json``.

Setup on a clean Debian machine: ``.ci/browser-setup.sh`` (chromium via apt, playwright via pip).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # for dashboards.lib.registry (the repo root is not a package)
    sys.path.insert(0, str(ROOT))
CHROMIUM = os.environ.get("STEERLAB_CHROMIUM", "/usr/bin/chromium")
# runs/ is git-ignored: a test run leaves the tracked README screenshots alone; refresh those with
# STEERLAB_SCREENSHOTS=docs/screenshots
SHOTS = Path(os.environ.get("STEERLAB_SCREENSHOTS", ROOT / "runs" / "screenshots"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
TIMEOUT_MS = 180_000  # generous: 2 shared cores, other jobs running
VIEWPORT = {"width": 1400, "height": 1000}
RECORD = ROOT / "docs" / "records" / "dashboard_cold_start.json"  # written when STEERLAB_RECORD=1
COMMAND = "STEERLAB_RECORD=1 .venv/bin/pytest tests/browser/test_dashboard_browser.py -s"


@dataclass
class Dashboard:
    url: str
    page: object
    runs: Path
    cold_start_s: float
    log: Path
    context: object


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"dashboard not healthy after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _settle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    try:
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]', timeout=1500)
    except Exception:  # noqa: BLE001  (the run may have finished before we looked)
        pass
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=TIMEOUT_MS)


def _plot_text(loc, *expected: str) -> str:
    """The text of ``loc`` (a plot, or a panel holding one) once it shows every ``expected`` string: plotly draws
    after Streamlit's run has ended, so a plot's text is waited for, not read at once."""
    from playwright.sync_api import expect

    for e in expected:
        expect(loc).to_contain_text(e, use_inner_text=True, timeout=TIMEOUT_MS)
    return loc.inner_text()


def _assert_clean(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.first.inner_text()


def _screenshot(page, name: str) -> Path:
    """PNG of the viewport, reduced to a 256-colour palette (commit-sized)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    from PIL import Image

    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def _record_cold_start(cold: float, healthy: float) -> None:
    """Write the measured cold start (one measurement: a fresh server, one browser) to :data:`RECORD`."""
    import streamlit
    import torch

    from steerlab.models.load import default_model

    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps({
        "what": "seconds from starting `steerlab dashboard` (a fresh server process) to a usable Generate page "
                "opened at /generate: model loaded (status line shown) and the Generate button enabled",
        "command": COMMAND,
        "cold_start_s": round(cold, 2),
        "server_healthy_s": round(healthy, 2),
        "rounds": 1,
        "model": default_model(),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"streamlit": streamlit.__version__, "torch": torch.__version__},
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }, indent=2) + "\n")


def _seed_runs(root: Path) -> None:
    """A saved generation comparison for the Runs page to list and reopen (written by hand, no model),
    and a real, small sampling comparison (the harness on stories260K) for the Sampling page."""
    from steerlab.decoding.compare import CompareConfig, run_compare

    cfg = CompareConfig(model="shared:stories260K", prompts=["Once upon a time", "The little dog", "One day"],
                        samplers=[{"name": "top_h", "params": {"alpha": 0.4}}, {"name": "top_p", "params": {"p": 0.9}},
                                  {"name": "min_p", "params": {"p": 0.1}}],
                        temperatures=[0.7, 1.0, 1.5], samples=3, max_new_tokens=16)
    run_compare(cfg, root / "sampling-compare", progress=False)

    from steerlab.artifacts import write_artifact
    from steerlab.steering.artifact import comparison_payload
    from steerlab.steering.compare import Comparison
    from steerlab.viz.tokens import TokenStep

    def row(words: list[str], p: float) -> list[TokenStep]:
        return [TokenStep(i, 10 + i, w, p, p, ((w, p), (" the", 0.1))) for i, w in enumerate(words)]

    settings = {"model": "shared:stories260K", "sampler": {"name": "greedy", "params": {}}, "max_new_tokens": 4,
                "seed": 0, "chat": False, "interventions": []}
    cmp = Comparison(prompts=["Once upon a time"], settings={"baseline": settings, "steered": settings},
                     steps={"baseline": [row([",", " there", " was", " a"], 0.8)],
                            "steered": [row([",", " a", " happy", " dog"], 0.6)]})
    write_artifact(root / "seeded-comparison", **comparison_payload(cmp))

    from steerlab.security.artifact import write_sweep
    from steerlab.security.experiment import demo_record

    write_sweep(root / "security-demo", demo_record())  # a hand-written sweep record (no model) for the Security page


@pytest.fixture(scope="module")
def dash(tmp_path_factory, pytestconfig):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run .ci/browser-setup.sh (apt-get install -y chromium) "
                    "or set STEERLAB_CHROMIUM", pytrace=False)
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("dashboard")
    runs = tmp / "runs"
    _seed_runs(runs)
    log = tmp / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    env.pop("STEERLAB_DASHBOARD_MODEL", None)  # the embedded default model
    with open(log, "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "steerlab.cli.main", "dashboard", "--port", str(port), "--runs", str(runs)],
            cwd=tmp, env=env, stdout=logf, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, proc, log)
        healthy = time.perf_counter() - t0
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS, viewport=VIEWPORT)
            page = ctx.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{url}/generate")  # the server's first page request: Generate by its own URL
            page.get_by_text(" params · ").wait_for()  # the status line: model loaded
            page.locator('button:has-text("Generate"):enabled').first.wait_for()
            cold = time.perf_counter() - t0
            if os.environ.get("STEERLAB_RECORD") == "1":
                _record_cold_start(cold, healthy)
            capture = pytestconfig.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled():  # printed even when pytest captures output
                print(f"\ndashboard cold start to a usable page: {cold:.1f} s (server process start -> model "
                      f"loaded and Generate enabled; server answered after {healthy:.1f} s; target < 20 s; "
                      "noisy on a shared machine)", flush=True)
            yield Dashboard(url, page, runs, cold, log, ctx)
            ctx.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# What each page shows of its own when opened (not the shell's sidebar): a page missing here fails the test.
OWN_CONTENT = {
    "generate": lambda page: page.locator('button:has-text("Generate"):enabled').first,
    "sampling": lambda page: page.get_by_role("tab", name="Sampler comparison"),
    "experts": lambda page: page.get_by_role("tab", name="Switch and regenerate"),
    "regions": lambda page: page.get_by_role("tab", name="Perturb and generate"),
    "preferences": lambda page: page.get_by_role("tab", name="Judge similarity"),
    "steer": lambda page: page.get_by_role("tab", name="Probes"),
    "security": lambda page: page.get_by_role("tab", name="Loss curves"),
    "runs": lambda page: page.get_by_text("Configuration", exact=True),
}


def _open(dash, path: str):
    """A new browser tab (a new Streamlit session) opened directly at ``/path``, settled."""
    page = dash.context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{dash.url}/{path}")
    page.locator("h1").first.wait_for()
    _settle(page)
    return page


def test_every_page_opens_by_its_own_url(dash):
    """Runs first (file order), so each page's first visit on this server is its URL typed in a new tab;
    the default page too (Streamlit serves a ``default=True`` page only at ``/``: ``/generate`` was
    "Page not found" and fell back to the main page), and ``/`` lands on the default page's URL."""
    from dashboards.lib.registry import PAGES

    assert set(OWN_CONTENT) == {p.key for p in PAGES}, "say in OWN_CONTENT what each page shows"
    for spec in PAGES:
        page = _open(dash, spec.key)
        try:
            OWN_CONTENT[spec.key](page).wait_for()
            assert page.locator("h1").first.inner_text() == spec.title
            assert page.url == f"{dash.url}/{spec.key}", page.url  # not sent back to the main page
            assert page.get_by_text("Page not found").count() == 0
            _assert_clean(page)
        finally:
            page.close()
    (home,) = [p for p in PAGES if p.default]
    page = _open(dash, "?run=seeded-comparison")  # `/` keeps its query (a shared link to a saved run)
    try:
        page.wait_for_url(f"{dash.url}/{home.key}?run=seeded-comparison")
        assert "seeded-comparison" in page.get_by_text("Showing saved run").inner_text()
        assert page.locator("h1").first.inner_text() == home.title
        assert page.get_by_text("Page not found").count() == 0
    finally:
        page.close()


def test_generate_page_side_by_side_with_hover_and_plot(dash):
    page = dash.page
    page.goto(dash.url)
    page.wait_for_url(f"{dash.url}/generate")
    _settle(page)
    assert page.locator("h1").first.inner_text() == "Generate"
    status = page.get_by_test_id("stSidebar").get_by_text(" params · ").inner_text()
    assert " · cpu · " in status and "RSS" in status
    page.get_by_role("button", name="Add to stack").click()  # the default steering vector
    _settle(page)
    page.get_by_role("button", name="Generate").click()
    page.locator(".sl-tok").first.wait_for()
    _settle(page)
    assert page.get_by_text("steered · ").count() >= 1 and page.get_by_text("baseline · ").count() >= 1
    page.get_by_text("Completions", exact=True).scroll_into_view_if_needed()
    page.mouse.wheel(0, 250)
    tok = page.locator(".sl-tokens").nth(1).locator(".sl-tok").nth(2)  # prompt 0, steered side
    assert "p=" in tok.get_attribute("data-tip")  # probabilities and alternatives on hover
    tok.hover()
    tip = tok.evaluate("e => getComputedStyle(e, '::after').content")
    assert "sampler p=" in tip  # the tooltip is drawn
    assert page.locator(".js-plotly-plot").count() >= 1
    _assert_clean(page)
    _screenshot(page, "generate")
    page.get_by_role("button", name="Save as run").click()
    page.get_by_text("Saved to").wait_for()
    _assert_clean(page)


def test_sampling_page_per_step_diagnostics(dash):
    page = dash.page
    page.goto(f"{dash.url}/sampling")
    _settle(page)
    assert page.locator("h1").first.inner_text() == "Sampling"
    page.get_by_role("button", name="Run").click()
    page.get_by_text("Completion", exact=False).first.wait_for()
    _settle(page)
    plots = page.locator(".js-plotly-plot")
    assert plots.count() >= 2  # per-step sizes/entropies and the cut-point bars
    _plot_text(plots.first, "kept-set size", "entropy (nats)")
    _plot_text(plots.nth(1), "keeps")  # each rule's cut at the chosen step
    _assert_clean(page)
    page.get_by_text("Completion", exact=False).first.scroll_into_view_if_needed()
    page.mouse.wheel(0, 420)
    page.wait_for_timeout(300)
    _screenshot(page, "sampling")
    page.get_by_role("tab", name="Sampler comparison").click()
    panel = page.get_by_role("tabpanel", name="Sampler comparison")
    panel.locator(".js-plotly-plot").first.wait_for()
    assert "judge PPL" in panel.inner_text()  # the harness's table
    assert panel.locator(".js-plotly-plot").count() == 2
    _assert_clean(page)
    panel.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.mouse.wheel(0, -120)
    page.wait_for_timeout(300)
    _screenshot(page, "sampling_compare")


def test_runs_page_lists_and_reopens_a_run(dash):
    page = dash.page
    page.goto(f"{dash.url}/runs")
    _settle(page)
    assert page.locator("h1").first.inner_text() == "Runs"
    page.get_by_text("Configuration", exact=True).wait_for()
    page.locator('[data-testid="stDataFrame"]').first.wait_for()  # the runs table
    _assert_clean(page)
    _screenshot(page, "runs")
    page.get_by_role("button", name="Open in Generate").click()
    page.get_by_text("Showing saved run").wait_for()
    _settle(page)
    assert "run=" in page.url
    assert page.locator(".sl-tok").count() > 0
    _assert_clean(page)


def test_experts_page_images_and_switches(dash):
    page = dash.page
    page.goto(f"{dash.url}/experts")
    _settle(page)
    assert page.locator("h1").first.inner_text() == "Experts"
    page.get_by_role("button", name="Image experts").click()
    page.get_by_text("Ranked experts").wait_for()
    _settle(page)
    panel = page.get_by_role("tabpanel", name="Imaging")
    assert panel.locator(".js-plotly-plot").count() >= 2  # the fTRI heatmap and the per-token raster
    assert "Tokens that select it most" in panel.inner_text()
    _assert_clean(page)
    _screenshot(page, "experts")
    page.get_by_role("tab", name="Switch and regenerate").click()
    panel = page.get_by_role("tabpanel", name="Switch and regenerate")
    panel.get_by_role("combobox", name="Fill the set from").click()
    page.get_by_role("option", name="trained refusal experts (organism build record)").click()
    panel.get_by_role("button", name="Fill", exact=True).click()
    _settle(page)
    page.get_by_role("button", name="Generate side by side").click()
    page.get_by_text("experts off · ").first.wait_for()
    _settle(page)
    assert "experts off · compliance" in panel.inner_text()  # the trained experts off: refusals turn into answers
    _settle(page)
    _assert_clean(page)
    _screenshot(page, "experts_switch")


def test_regions_page_scores_and_perturbs(dash):
    page = dash.page
    page.goto(f"{dash.url}/regions")
    _settle(page)
    assert page.locator("h1").first.inner_text() == "Regions"
    page.get_by_role("tab", name="Perturb and generate").click()
    panel = page.get_by_role("tabpanel", name="Perturb and generate")
    panel.get_by_role("button", name="Score").click()  # importance of the default model on eng + deu, 256 tokens each
    panel.get_by_role("button", name="Perturb and generate").wait_for()
    _settle(page)
    panel.get_by_role("button", name="Perturb and generate").click()
    panel.get_by_text("unmodified · ").wait_for()
    _settle(page)
    assert "zero " in panel.inner_text() and " entries of " in panel.inner_text()  # the edited side's header
    _assert_clean(page)
    _screenshot(page, "regions")


def test_preferences_page_published_weights_two_judges_and_a_pair(dash):
    """The published weights (Li et al. 2024) load; two judges are chosen (human and qwen-72b-chat instead of the
    default GPT-4) and drawn side by side; the similarity heatmap draws; a pair opens in the pair browser."""
    from steerlab._paths import shared_dir

    advice = json.loads((shared_dir() / "data/preference-dissection/query_aware_idxs.json").read_text())["Advice"]
    page = dash.page
    page.goto(f"{dash.url}/preferences")
    _settle(page)
    assert page.locator("h1").first.inner_text() == "Preferences"
    assert "CC-BY-NC-4.0" in page.get_by_text("Preference-dissection data").inner_text()
    judges = page.get_by_test_id("stMultiSelect").filter(
        has=page.get_by_test_id("stWidgetLabel").get_by_text("Judges", exact=True))
    judges.get_by_role("button", name="Remove gpt-4-1106-preview").click()
    _settle(page)
    box = judges.locator("input")
    box.click()
    box.fill("qwen-72b-chat")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    _settle(page)
    assert "human" in judges.inner_text() and "qwen-72b-chat" in judges.inner_text()
    plot = page.locator(".js-plotly-plot").first
    text = _plot_text(plot, "qwen-72b-chat", "human")
    assert "gpt-4-1106-preview" not in text
    assert "contain rich info" in text and "Advice" in text
    _assert_clean(page)
    _screenshot(page, "preferences")
    page.get_by_role("tab", name="Judge similarity").click()
    _settle(page)
    _plot_text(page.get_by_role("tabpanel", name="Judge similarity"), "Pearson r of property weights")
    page.get_by_role("tab", name="Pairs").click()
    panel = page.get_by_role("tabpanel", name="Pairs")
    number = panel.get_by_role("spinbutton")
    number.fill("3")
    number.press("Enter")
    _settle(page)
    panel.get_by_text(f"Pair {advice[3]} - scenario: Advice").wait_for()
    assert "Verdicts" in panel.inner_text()
    _assert_clean(page)


def test_steer_page_extracts_a_direction_and_profiles_probes(dash):
    page = dash.page
    page.goto(f"{dash.url}/steer")
    _settle(page)
    assert page.locator("h1").first.inner_text() == "Steer"
    limit = page.get_by_label("Prompts per label")
    limit.fill("8")
    limit.press("Enter")
    _settle(page)
    page.get_by_role("button", name="Extract").click()
    page.get_by_text("· position last ·").wait_for()  # the direction's provenance line
    _settle(page)
    page.get_by_role("tab", name="Probes").click()
    page.get_by_role("button", name="Fit probes").click()
    page.get_by_text("Best site").wait_for()
    _settle(page)
    panel = page.get_by_role("tabpanel", name="Probes")
    _plot_text(panel.locator(".js-plotly-plot").first, "held-out accuracy")
    _assert_clean(page)
    _screenshot(page, "steer")
def test_security_page_curves_and_loss(dash):
    page = dash.page
    page.goto(f"{dash.url}/security")
    _settle(page)
    assert page.locator("h1").first.inner_text() == "Security"
    plot = page.locator(".js-plotly-plot").first
    _plot_text(plot, "harmful fine-tuning samples", "with security vector")
    _assert_clean(page)
    _screenshot(page, "security")
    page.get_by_role("tab", name="Loss curves").click()
    panel = page.get_by_role("tabpanel", name="Loss curves")
    _plot_text(panel.locator(".js-plotly-plot").first, "Loss per data part")
    page.get_by_role("tab", name="Side by side").click()
    page.get_by_text("Recorded answers").wait_for()
    _assert_clean(page)
