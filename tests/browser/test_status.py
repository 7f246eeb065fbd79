"""<tether-status>, <tether-banner> and stale marking, in Chromium against a real hub."""

from __future__ import annotations

import re
import time

from playwright.async_api import Page

from tether.chaos import ChaosProxy
from tether.server.serve import HubServer

from ..support import T
from .test_conformance import SCALED, proxy, until  # noqa: F401 (fixture)

PAGE = """
<tether-status label></tether-status>
<tether-banner debounce="{debounce}"></tether-banner>
<div id="card" data-tether-topic="odds">odds</div>
"""


async def mount(page: Page, url: str, *, debounce: float, **options: object) -> None:
    # Not page.set_content: it rewrites the document with document.write, after which
    # Chromium does not upgrade the custom elements.
    await page.evaluate(
        "(html) => { document.body.innerHTML = html; }", PAGE.format(debounce=debounce)
    )
    await page.evaluate(
        """async ([url, options]) => {
            const t = await import('/tether.js');
            const ui = await import('/tether-status.js');
            const client = t.connect(url, options);
            window.client = client;
            client.subscribe('odds', () => {});
            document.querySelector('tether-status').client = client;
            document.querySelector('tether-banner').client = client;
            ui.bindStale(client);
        }""",
        [url, {**SCALED, **options}],
    )


async def attr(page: Page, selector: str, name: str) -> str | None:
    value: str | None = await page.get_attribute(selector, name)
    return value


async def test_indicator_banner_and_stale_follow_the_connection(
    page: Page,
    hub_server: HubServer,
    proxy: ChaosProxy,  # noqa: F811
) -> None:
    await page.goto(hub_server.http_url + "/healthz")
    debounce = 15 * T
    await mount(
        page,
        f"ws://127.0.0.1:{proxy.port}/ws",
        debounce=debounce,
        maxAttempts=4,
        backoffBase=4 * T,
        backoffCap=4 * T,
        circuitCooldown=1000 * T,
    )

    async def state_is(value: str) -> bool:
        return await attr(page, "tether-status", "state") == value

    await until(lambda: state_is("connected"), what="green")
    await until(lambda: _not_stale(page), what="card live")
    assert "Live" in await page.evaluate(
        "() => document.querySelector('tether-status').shadowRoot.textContent"
    )
    assert not await page.evaluate(
        "() => document.querySelector('tether-banner').hasAttribute('visible')"
    )

    proxy.refuse()
    proxy.cut()
    down_at = time.monotonic()
    await until(lambda: state_is("reconnecting"), what="yellow")
    assert await attr(page, "#card", "data-stale") is not None
    assert "next attempt in" in (await attr(page, "tether-status", "title") or "")
    # The banner waits out its debounce before appearing...
    assert not await page.evaluate(
        "() => document.querySelector('tether-banner').hasAttribute('visible')"
    )
    await page.wait_for_selector("tether-banner[visible]", timeout=100 * T * 1000)
    assert time.monotonic() - down_at >= debounce - T
    text = await page.evaluate(
        "() => document.querySelector('tether-banner').shadowRoot.textContent"
    )
    assert "Live updates paused" in text
    # The banner counts down to the next attempt.
    assert re.search(r"reconnecting in \d+ s…|trying again in \d+ s", text), text

    # ...and after max attempts the indicator is red with a keyboard-focusable Retry.
    await until(lambda: state_is("failed"), what="red")
    retry = page.locator("tether-status").get_by_role("button", name="Retry")
    await retry.focus()
    proxy.heal()
    await page.keyboard.press("Enter")
    await until(lambda: state_is("connected"), what="green again")
    await until(lambda: _not_stale(page), what="card live again")
    await page.wait_for_selector("tether-banner:not([visible])", state="attached")


async def test_blip_shorter_than_debounce_shows_no_banner(
    page: Page,
    hub_server: HubServer,
    proxy: ChaosProxy,  # noqa: F811
) -> None:
    await page.goto(hub_server.http_url + "/healthz")
    await mount(page, f"ws://127.0.0.1:{proxy.port}/ws", debounce=30 * T)
    await page.wait_for_selector("tether-status[state=connected]")
    await page.evaluate(
        """() => { window.bannerSeen = false; window.seen = [];
            const banner = document.querySelector('tether-banner');
            const status = document.querySelector('tether-status');
            new MutationObserver(() => {
                if (banner.hasAttribute('visible')) window.bannerSeen = true;
            }).observe(banner, { attributes: true });
            new MutationObserver(() => window.seen.push(status.getAttribute('state')))
                .observe(status, { attributes: true, attributeFilter: ['state'] }); }"""
    )
    proxy.cut()

    async def back() -> bool:
        seen: list[str] = await page.evaluate("() => window.seen")
        return "reconnecting" in seen and seen[-1] == "connected"

    await until(back, what="reconnecting, then connected again")
    assert await page.evaluate("() => window.bannerSeen") is False


async def banner_part(page: Page, part: str) -> str | None:
    text: str | None = await page.evaluate(
        """(part) => {
            const el = document.querySelector('tether-banner').shadowRoot
                .querySelector(`[part=${part}]`);
            return el ? el.textContent : null;
        }""",
        part,
    )
    return text


async def test_banner_message_sets_the_words_and_keeps_the_countdown(
    page: Page,
    hub_server: HubServer,
    proxy: ChaosProxy,  # noqa: F811
) -> None:
    await page.goto(hub_server.http_url + "/healthz")
    await mount(
        page,
        f"ws://127.0.0.1:{proxy.port}/ws",
        debounce=5 * T,
        backoffBase=15 * T,
        backoffCap=15 * T,
        maxAttempts=1000,
    )
    message = "Live updates paused, attempting to reconnect…"
    await page.evaluate(
        "(m) => document.querySelector('tether-banner').setAttribute('message', m)", message
    )
    await page.wait_for_selector("tether-status[state=connected]")
    proxy.refuse()
    proxy.cut()
    await page.wait_for_selector("tether-banner[visible]", timeout=100 * T * 1000)
    assert await banner_part(page, "text") == message  # the app's words, as given

    async def counting_down() -> bool:
        countdown = await banner_part(page, "countdown") or ""
        return re.fullmatch(r"Next attempt in \d+ s\.", countdown) is not None

    await until(counting_down, what="the countdown after the message")
    # Without the attribute the default wording is back, countdown inside it.
    await page.evaluate("() => document.querySelector('tether-banner').removeAttribute('message')")
    await until(
        lambda: _default_words(page),
        what="the default wording",
    )
    assert await banner_part(page, "countdown") is None
    proxy.heal()
    await page.wait_for_selector("tether-banner:not([visible])", state="attached")


async def _default_words(page: Page) -> bool:
    text = await banner_part(page, "text") or ""
    return re.fullmatch(r"Live updates paused — reconnecting( in \d+ s)?…", text) is not None


async def _not_stale(page: Page) -> bool:
    return await attr(page, "#card", "data-stale") is None


async def show_degraded(page: Page, url: str, **options: object) -> None:
    await page.evaluate(
        """async ([url, options]) => {
            document.body.innerHTML = '<tether-status show="degraded"></tether-status>';
            const t = await import('/tether.js');
            await import('/tether-status.js');
            const client = t.connect(url, options);
            window.client = client;
            document.querySelector('tether-status').client = client;
        }""",
        [url, {**SCALED, **options}],
    )


async def visible(page: Page) -> bool:
    shown: bool = await page.is_visible("tether-status")
    return shown


async def test_show_degraded_hides_the_indicator_while_healthy_only(
    page: Page,
    hub_server: HubServer,
    proxy: ChaosProxy,  # noqa: F811
) -> None:
    await page.goto(hub_server.http_url + "/healthz")
    await show_degraded(page, f"ws://127.0.0.1:{proxy.port}/ws")
    await until(lambda: _state(page, "connected"), what="connected")
    assert not await visible(page)
    assert await page.evaluate("() => window.tether === undefined")  # no debug: no helpers
    proxy.refuse()
    proxy.cut()
    await until(lambda: _state(page, "reconnecting"), what="reconnecting")
    assert await visible(page)  # degraded: shown
    proxy.heal()
    await until(lambda: _state(page, "connected"), what="connected again")
    assert not await visible(page)


RECONNECTED = """(n) =>
    window.tether.getMetrics().totalReconnects === n && window.client.state === 'connected'"""


async def test_debug_on_the_page_url_shows_the_indicator_and_installs_the_helpers(
    page: Page, hub_server: HubServer
) -> None:
    await page.goto(hub_server.http_url + "/healthz?debug=true")
    await show_degraded(page, hub_server.url)
    await until(lambda: _state(page, "connected"), what="connected")
    assert await visible(page)  # debug: always shown
    assert await page.evaluate("() => window.tether.getState()") == "connected"
    metrics = await page.evaluate("() => window.tether.getMetrics()")
    assert metrics["successfulConnects"] == 1
    # disconnect() drops the link as a network failure would; the client recovers by itself.
    await page.evaluate("() => window.tether.disconnect()")
    await until(
        lambda: page.evaluate(RECONNECTED, 1),
        what="recovered from the helper's disconnect",
    )
    await page.evaluate("() => window.tether.reconnect()")
    await until(
        lambda: page.evaluate(RECONNECTED, 2),
        what="reconnected by the helper",
    )


async def test_a_named_debug_global_and_an_explicit_false_beats_the_page(
    page: Page, hub_server: HubServer
) -> None:
    await page.goto(hub_server.http_url + "/healthz?debug=true")
    await show_degraded(page, hub_server.url, debug=False)
    await until(lambda: _state(page, "connected"), what="connected")
    assert not await visible(page)
    assert await page.evaluate("() => window.tether === undefined")
    await page.evaluate(
        """async (url) => {
            const t = await import('/tether.js');
            window.overlay = t.connect(url, { debug: 'landale_socket' });
        }""",
        hub_server.url,
    )
    await until(
        lambda: page.evaluate("() => window.landale_socket.getState() === 'connected'"),
        what="the named helpers",
    )


async def _state(page: Page, state: str) -> bool:
    return await page.evaluate("() => window.client.state") == state
