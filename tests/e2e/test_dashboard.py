"""The dashboard in a real browser (Debian's chromium driven by Playwright),
served by `dropwatch run` on a namespace lab fed with real drops.

Asserts what a person checks: the label rows show exactly the drops that were
sent, the chart has data, clicking a label filters the page and the URL, the
pcap button returns the sampled packets, and the empty / not attached / API
unreachable states render. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import RunningDaemon, lab_daemon
from dropwatch.lab import LAB_RULES, RX_V4, TX_EYEBALL_V4, TX_ORIGIN_V4, Lab

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("DROPWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
POLL = "0.5s"
N_X = 37  # customerX / eyeball / NO_SOCKET
M_Y = 23  # customerY / origin / NETFILTER_DROP
UI_TIMEOUT_MS = 15_000


# The daemon runs as in tests/e2e/test_daemon.py (tests/e2e/helpers.py).


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, RunningDaemon]]:
    """One lab + daemon for the read-only tests, with known drops already counted."""
    with lab_daemon(tmp_path_factory.mktemp("dashboard")) as (lb, d):
        # customerY first and paced under the kernel's sample rate (10/s per CPU by
        # default), so its drops are sampled for the pcap test; counts are exact either way.
        lb.send_udp(TX_ORIGIN_V4, RX_V4["customerY"], 9999, M_Y, interval_s=0.15)  # NETFILTER_DROP
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, N_X)                   # NO_SOCKET
        key_x, key_y = ("customerX", "eyeball", "NO_SOCKET"), ("customerY", "origin", "NETFILTER_DROP")
        d.wait_for(lambda: d.drops().get(key_x) == N_X and d.drops().get(key_y) == M_Y, "the drops in /drops")
        yield lb, d


# ---------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright missing: pip install -e '.[test]' (the browser itself is Debian's chromium)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} missing: scripts/install-deps.sh installs Debian's chromium package")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def page_of(browser: Any, width: int = 1280, height: int = 800, scheme: str = "light") -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme,
                              accept_downloads=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        ctx.close()


def open_dashboard(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.body.dataset.loaded !== undefined")


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def cell_value(page: Any, label: str, col: str) -> int:
    loc = page.locator(f'#labels tbody tr[data-label="{label}"] td.{col}')
    return int(loc.get_attribute("data-value"))


def wait_cell(page: Any, label: str, col: str, value: int) -> None:
    page.wait_for_function(
        "([l, c, v]) => { const td = document.querySelector(`#labels tbody tr[data-label=\"${l}\"] td.${c}`);"
        " return td && td.dataset.value === String(v); }", arg=[label, col, value])


def kpi_drops(page: Any) -> int:
    return int(page.locator("#kpi-drops").get_attribute("data-value"))


COLORED_PIXELS_JS = """() => {
  const c = document.querySelector('#chart-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;  // saturated pixels: the series; grid, axes and text are grey
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 200 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) n++;
  }
  return n;
}"""


# ---------------------------------------------------------------- tests


def test_label_table_and_chart_show_exact_drops(stack: tuple[Lab, RunningDaemon], browser: Any) -> None:
    lb, d = stack
    with page_of(browser) as page:
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        open_dashboard(page, d.url + "/")
        wait_cell(page, "customerX", "drops", N_X)
        wait_cell(page, "customerY", "drops", M_Y)
        # What a person reads: the numbers as shown, not only the data attributes.
        row_x = page.locator('#labels tbody tr[data-label="customerX"]')
        assert row_x.locator("td.drops").inner_text().strip() == str(N_X)
        assert row_x.locator("td.reason").inner_text().strip() == "NO_SOCKET"
        row_y = page.locator('#labels tbody tr[data-label="customerY"]')
        assert row_y.locator("td.drops").inner_text().strip() == str(M_Y)
        assert row_y.locator("td.reason").inner_text().strip() == "NETFILTER_DROP"
        assert cell_value(page, "customerX", "packets") >= N_X
        assert row_x.locator("svg.spark path").count() >= 1
        # The chart has data and drew it.
        page.wait_for_function("document.querySelector('#chart').dataset.state === 'ok'")
        chart = page.locator("#chart")
        # Unfiltered totals are at least what we sent: the drop reader sees the whole
        # kernel, so other namespaces' (unlabeled) drops may add to them.
        assert int(chart.get_attribute("data-total")) >= N_X + M_Y
        page.wait_for_function(f"+document.querySelector('#kpi-drops').dataset.value >= {N_X + M_Y}")
        assert page.evaluate(COLORED_PIXELS_JS) > 50
        assert page.locator("#chart-empty").is_hidden()
        legend = page.locator("#legend").inner_text()
        assert "customerX" in legend and "customerY" in legend
        # Breakdowns (unfiltered: the drop reader sees the whole kernel, so other
        # namespaces' unlabeled drops may add to these; exact counts are checked per label).
        reason = page.locator('.breakdown[data-key="reason"] .bar[data-name="NETFILTER_DROP"]')
        assert int(reason.get_attribute("data-count")) >= M_Y
        side = page.locator('.breakdown[data-key="side"] .bar[data-name="origin"]')
        assert int(side.get_attribute("data-count")) >= M_Y
        loc = page.locator('.breakdown[data-key="location"] .bar').first
        assert "+0x" in loc.get_attribute("data-name")
        assert page.locator(f'.breakdown[data-key="iface"] .bar[data-name="{lb.rx_if}"]').count() == 1
        # Rules, read-only, with counts.
        rules = page.locator("#rules tbody tr")
        assert rules.count() == len(LAB_RULES["rules"])  # type: ignore[arg-type]
        assert int(rules.nth(1).locator("td.drops").get_attribute("data-value")) == M_Y
        # Health.
        assert page.locator("#health").get_attribute("data-state") == "ok"
        assert page.locator("#banner").is_hidden()
        shot(page, "dashboard-1280x800-light.png")
        # Everything came from the daemon: no CDN, no other host.
        assert requested and all(u.startswith(d.url + "/") for u in requested), requested


def test_click_label_filters_page_and_url(stack: tuple[Lab, RunningDaemon], browser: Any) -> None:
    _, d = stack
    with page_of(browser) as page:
        open_dashboard(page, d.url + "/")
        wait_cell(page, "customerY", "drops", M_Y)
        page.locator('#labels tbody tr[data-label="customerY"] td.drops').click()
        page.wait_for_url("**/?label=customerY*")
        page.wait_for_function(f"document.querySelector('#kpi-drops').dataset.value === '{M_Y}'")
        page.wait_for_function(f"document.querySelector('#chart').dataset.total === '{M_Y}'")
        assert "label=customerY" in page.url and "since=-15m" in page.url
        assert page.locator('.chip[data-key="label"][data-value="customerY"]').count() == 1
        page.wait_for_selector('#labels tbody tr.selected[data-label="customerY"]')
        # Every breakdown follows the filter.
        page.wait_for_function(
            f"document.querySelector('.breakdown[data-key=side] .bars').dataset.total === '{M_Y}'")
        sides = page.locator('.breakdown[data-key="side"] .bar')
        assert sides.count() == 1 and sides.first.get_attribute("data-name") == "origin"
        page.wait_for_function(
            f"document.querySelector('.breakdown[data-key=reason] .bars').dataset.total === '{M_Y}'")
        reasons = page.locator('.breakdown[data-key="reason"] .bar')
        assert reasons.count() == 1 and reasons.first.get_attribute("data-name") == "NETFILTER_DROP"
        # The other labels stay in the table (to switch), with their own counts.
        assert cell_value(page, "customerX", "drops") == N_X
        shot(page, "dashboard-filtered-customerY.png")
        # Clicking the selected label again clears the filter.
        page.locator('#labels tbody tr[data-label="customerY"] td.drops').click()
        page.wait_for_function("!location.search.includes('label=')")
        page.wait_for_function(f"+document.querySelector('#kpi-drops').dataset.value >= {N_X + M_Y}")
        # A pasted link restores the filters and the range.
        open_dashboard(page, d.url + "/?label=customerX&since=-1h")
        page.wait_for_function(f"document.querySelector('#kpi-drops').dataset.value === '{N_X}'")
        assert page.locator('.range button[data-since="-1h"]').get_attribute("class") == "active"
        assert page.locator('.chip[data-key="label"][data-value="customerX"]').count() == 1
        assert page.locator("#pcap").get_attribute("href") == "/drops/samples.pcap?label=customerX"
        # Range picker: 6h and a custom window update the URL.
        page.locator('.range button[data-since="-6h"]').click()
        page.wait_for_url("**since=-6h*")
        page.locator("#custom-toggle").click()
        page.fill("#custom-since", "-30m")
        page.fill("#custom-until", "now")
        page.locator("#custom button[type=submit]").click()
        page.wait_for_url("**since=-30m*")
        page.wait_for_function(f"document.querySelector('#kpi-drops').dataset.value === '{N_X}'")
        # A breakdown click adds a filter too.
        page.locator('.breakdown[data-key="reason"] .bar[data-name="NO_SOCKET"]').click()
        page.wait_for_url("**reason=NO_SOCKET*")


def test_pop_and_attribution_breakdowns_and_pop_filter_in_the_url(stack: tuple[Lab, RunningDaemon],
                                                                  browser: Any) -> None:
    """The lab's traffic is not tunnelled: PoP none, attributed by metadata.
    A PoP filter lives in the URL like any other and narrows every panel."""
    _, d = stack
    with page_of(browser) as page:
        open_dashboard(page, d.url + "/?label=customerX,customerY")
        page.wait_for_function(
            f"document.querySelector('.breakdown[data-key=pop] .bars').dataset.total === '{N_X + M_Y}'")
        pops = page.locator('.breakdown[data-key="pop"] .bar')
        assert pops.count() == 1 and pops.first.get_attribute("data-name") == "none"
        assert int(pops.first.get_attribute("data-count")) == N_X + M_Y
        page.wait_for_function(
            f"document.querySelector('.breakdown[data-key=source] .bars').dataset.total === '{N_X + M_Y}'")
        via = page.locator('.breakdown[data-key="source"] .bar')
        assert via.count() == 1 and via.first.get_attribute("data-name") == "metadata"
        # A click on a PoP filters the page and the URL.
        pops.first.click()
        page.wait_for_url("**pop=none*")
        assert page.locator('.chip[data-key="pop"][data-value="none"]').count() == 1
        page.wait_for_function(f"document.querySelector('#kpi-drops').dataset.value === '{N_X + M_Y}'")
        # The chart can be split by PoP and by attribution.
        page.select_option("#chart-by", "source")
        page.wait_for_url("**by=source*")
        page.wait_for_function("document.querySelector('#legend').innerText.includes('metadata')")
        # A pasted link with a PoP that saw nothing: every panel is empty, the
        # packets (counted per PoP) too.
        open_dashboard(page, d.url + "/?pop=ams01&label=customerX")
        page.wait_for_function("document.querySelector('#chart').dataset.state === 'empty'")
        assert page.locator('.chip[data-key="pop"][data-value="ams01"]').count() == 1
        assert kpi_drops(page) == 0
        page.wait_for_function("document.querySelector('#kpi-packets').dataset.value === '0'")
        assert "No drops" in page.locator('.breakdown[data-key="pop"]').inner_text()
        assert "pop=ams01" in page.locator("#pcap").get_attribute("href")
        shot(page, "dashboard-pop-ams01.png")


def test_samples_table_and_pcap_download(stack: tuple[Lab, RunningDaemon], browser: Any,
                                         tmp_path: Path) -> None:
    _, d = stack
    if d.get("/drops/samples").status_code == 404:
        pytest.fail("GET /drops/samples is not served by this daemon")
    with page_of(browser) as page:
        open_dashboard(page, d.url + "/?label=customerY")
        page.wait_for_function("+document.querySelector('#samples').dataset.count > 0")
        rows = page.locator("#samples tbody tr")
        first = rows.first.locator("td")
        cells = [first.nth(i).inner_text() for i in range(first.count())]
        assert cells[1] == "customerY" and cells[2] == "origin" and cells[3] == "udp"
        assert cells[4].startswith(TX_ORIGIN_V4 + ":") and cells[5] == f"{RX_V4['customerY']}:9999"
        assert cells[7] == "NETFILTER_DROP" and cells[8].startswith("nft_do_chain+0x")
        assert cells[10] == "none" and cells[11] == "metadata"  # PoP, attribution
        n_rows = rows.count()
        with page.expect_download() as dl:
            page.locator("#pcap").click()
        path = tmp_path / "samples.pcapng"
        dl.value.save_as(str(path))
    data = path.read_bytes()
    assert data[:4] == b"\x0a\x0d\x0d\x0a", "not a pcapng file"
    tcpdump = shutil.which("tcpdump")
    assert tcpdump, "tcpdump missing: scripts/install-deps.sh installs it"
    out = subprocess.run([tcpdump, "-nn", "-r", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stdout.splitlines() if x.strip()]
    assert len(lines) >= n_rows >= 1
    for line in lines:
        assert f"{TX_ORIGIN_V4}." in line and f"> {RX_V4['customerY']}.9999: UDP" in line, line


def test_empty_state(stack: tuple[Lab, RunningDaemon], browser: Any) -> None:
    _, d = stack
    with page_of(browser) as page:
        open_dashboard(page, d.url + "/?label=customerY&side=eyeball")
        page.wait_for_function("document.querySelector('#chart').dataset.state === 'empty'")
        empty = page.locator("#chart-empty")
        assert empty.is_visible()
        assert "No drops match these filters in the last 15 min" in empty.inner_text()
        assert kpi_drops(page) == 0
        assert "No drops" in page.locator('.breakdown[data-key="reason"]').inner_text()
        shot(page, "dashboard-empty.png")
        empty.locator("button", has_text="clear filters").click()
        page.wait_for_function("document.querySelector('#chart').dataset.state === 'ok'")
        assert "label=" not in page.url
        # A bad filter in a pasted link: the API's 400 message is shown, not a blank page.
        open_dashboard(page, d.url + "/?reason=NOT_A_REASON")
        banner = page.locator("#banner")
        assert banner.get_attribute("data-kind") == "error"
        assert "unknown reason 'NOT_A_REASON'" in banner.inner_text()
        assert page.locator("#chart").get_attribute("data-state") == "error"


@pytest.mark.parametrize("width,height,scheme", [(1280, 800, "dark"), (2560, 1200, "light"), (2560, 1200, "dark")])
def test_layout_screenshots(stack: tuple[Lab, RunningDaemon], browser: Any, width: int, height: int,
                            scheme: str) -> None:
    _, d = stack
    with page_of(browser, width, height, scheme) as page:
        open_dashboard(page, d.url + "/")
        wait_cell(page, "customerX", "drops", N_X)
        page.wait_for_function("document.querySelector('#chart').dataset.state === 'ok'")
        bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        rgb = [int(x) for x in bg[bg.index("(") + 1:bg.index(")")].split(",")[:3]]
        assert (sum(rgb) < 150) == (scheme == "dark"), bg
        # Nothing overflows the viewport sideways.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shot(page, f"dashboard-{width}x{height}-{scheme}.png")


def test_auto_refresh_not_attached_then_api_unreachable(browser: Any, tmp_path: Path) -> None:
    """Its own lab and daemon, since it breaks both: new drops appear without a
    reload; the interface is deleted, so /healthz answers 503 and the page says
    the daemon is not attached; the daemon stops, and the page says the API is
    unreachable, keeping the last data."""
    with lab_daemon(tmp_path) as (lb, d), page_of(browser) as page:
        open_dashboard(page, d.url + "/?refresh=1")
        page.wait_for_selector('#labels tbody tr[data-label="customerX"]')
        lb.send_udp(TX_EYEBALL_V4, RX_V4["customerX"], 5555, 11)
        wait_cell(page, "customerX", "drops", 11)  # via auto-refresh, no reload

        lb.ns(lb.rx_ns, "ip", "link", "del", lb.rx_if)  # the XDP link dies with the device
        d.wait_for(lambda: d.get("/healthz").status_code == 503, "/healthz to answer 503")
        page.wait_for_function("document.querySelector('#health').dataset.state === 'unhealthy'")
        banner = page.locator("#banner")
        assert banner.is_visible()
        text = banner.inner_text()
        assert "Daemon not attached" in text and "no interface attached" in text, text
        assert page.locator("#health").inner_text() == "not attached"
        assert cell_value(page, "customerX", "drops") == 11  # the history is still shown
        shot(page, "dashboard-not-attached.png")

        d.stop()
        page.wait_for_function("document.body.dataset.api === 'unreachable'")
        assert banner.is_visible() and "API unreachable" in banner.inner_text()
        assert page.locator("#health").get_attribute("data-state") == "unreachable"
        assert cell_value(page, "customerX", "drops") == 11  # last data stays, dimmed
        shot(page, "dashboard-api-unreachable.png")
