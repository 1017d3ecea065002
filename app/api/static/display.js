/*
 * The till display: what the customer sees beside the till.
 *
 * The page reads its till id from its own path (/tills/{id}/display) and its display token from
 * the URL fragment (#token=..., never sent to a server). It trades the token once for an HttpOnly
 * cookie (POST .../display/session), drops the fragment, and renews the cookie at half its
 * lifetime. The QR image and the event stream then authenticate with the cookie by themselves.
 *
 * Live state comes from one EventSource on .../display/events. The first message is a snapshot;
 * every later one carries the change id as its SSE id, so the browser's automatic reconnect
 * (Last-Event-ID) replays what was missed. If the browser gives up (the stream was refused), the
 * page reconnects itself with ?lastEventId=.
 *
 * For tests and kiosks the body carries data-status, data-connection, data-connections (streams
 * opened) and data-snapshots (snapshots received).
 */
"use strict";

(function () {
  const TEXT = {
    loading: ["One moment", ""],
    idle: ["Scan to pay", "Open the Vipps or MobilePay app and scan the code"],
    scan: ["Scan to pay", "Open the Vipps or MobilePay app and scan the code"],
    waiting: ["Scanned", "The cashier is ringing up your purchase"],
    identifying: ["One moment", "Checking your membership"],
    requesting: ["One moment", "Sending the payment to your app"],
    approve: ["Approve in the app", "Check your phone and approve the payment"],
    cancelling: ["Cancelling", "One moment"],
    authorized: ["Approved", "Thank you"],
    paid: ["Paid", "Thank you for your purchase"],
    refunded: ["Refunded", "The money is on its way back"],
    declined: ["Declined", "The payment was declined in the app"],
    expired: ["Expired", "The payment was not approved in time"],
    cancelled: ["Cancelled", "The sale was cancelled"],
    failed: ["Payment failed", "Please ask the cashier"],
    "link-expired": ["Display link expired", "Open the display again from the till"],
  };
  const QR_STATUSES = new Set(["idle", "scan"]);
  const WAITING_SECONDS = 180;
  const RETRY_MS = 2000;

  const tillId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const base = "/tills/" + encodeURIComponent(tillId) + "/display";
  const body = document.body;
  const byId = (id) => document.getElementById(id);

  let current = null; // the DisplayView on screen; null when idle
  let holdTimer = null;
  let source = null;
  let lastEventId = null;
  let validUntil = 0; // local clock, ms: when the cookie's token expires
  let renewTimer = null;
  let reconnectTimer = null;
  let connections = 0;
  let snapshots = 0;

  function money(value, currency) {
    const abs = Math.abs(value);
    const major = Math.floor(abs / 100).toString().replace(/\B(?=(\d{3})+(?!\d))/g, " ");
    const minor = String(abs % 100).padStart(2, "0");
    return (value < 0 ? "−" : "") + major + "." + minor + " " + currency;
  }

  function render(status, view) {
    const [headline, subline] = TEXT[status] || TEXT.idle;
    body.dataset.status = status;
    body.dataset.checkoutId = view ? view.checkoutId : "";
    byId("headline").textContent = headline;
    byId("subline").textContent = subline;
    byId("amount").textContent = view ? money(view.amount.value, view.amount.currency) : "";
    byId("qr-box").hidden = !QR_STATUSES.has(status);

    const list = byId("lines");
    list.replaceChildren();
    const lines = view ? view.lines : [];
    for (const line of lines) {
      const item = document.createElement("li");
      const label = document.createElement("span");
      if (line.quantity) {
        const qty = document.createElement("span");
        qty.className = "qty";
        qty.textContent = line.quantity + (line.unit && line.unit !== "PCS" ? " " + line.unit : "") + " ×";
        label.append(qty);
      }
      label.append(document.createTextNode(line.name));
      const total = document.createElement("span");
      total.className = "total";
      total.textContent = money(line.total, view.amount.currency);
      item.append(label, total);
      list.append(item);
    }
    const tip = byId("tip");
    tip.hidden = !(view && view.tip);
    tip.textContent = view && view.tip ? "Tip " + money(view.tip, view.amount.currency) : "";
    byId("receipt").hidden = lines.length === 0;
  }

  function showIdle() {
    clearTimeout(holdTimer);
    current = null;
    render("idle", null);
  }

  function showView(view) {
    clearTimeout(holdTimer);
    current = view;
    render(view.status, view);
    if (view.final) {
      holdTimer = setTimeout(showIdle, view.holdSeconds * 1000);
    }
  }

  function apply(message) {
    if (message.kind === "snapshot") {
      snapshots += 1;
      body.dataset.snapshots = String(snapshots);
    }
    const view = message.view;
    if (message.kind.startsWith("scan.")) {
      // The customer scanned before the sale was rung up: the check-in waits for it.
      if (message.kind === "scan.waiting" && (!current || current.final)) {
        clearTimeout(holdTimer);
        current = null;
        render("waiting", null);
        holdTimer = setTimeout(showIdle, WAITING_SECONDS * 1000);
      }
      return;
    }
    if (!view) {
      if (message.kind === "snapshot") showIdle();
      return;
    }
    if (view.final) {
      // Late news of an older sale never hides the sale in progress.
      if (current && !current.final && current.checkoutId !== view.checkoutId) return;
      if (view.holdSeconds <= 0) {
        if (message.kind === "snapshot" || (current && current.checkoutId === view.checkoutId)) {
          showIdle();
        }
        return;
      }
    }
    showView(view);
  }

  function setConnection(state, text) {
    body.dataset.connection = state;
    byId("connection").textContent = text;
  }

  function linkExpired() {
    if (source) source.close();
    clearTimeout(renewTimer);
    clearTimeout(reconnectTimer);
    clearTimeout(holdTimer);
    current = null;
    render("link-expired", null);
    setConnection("closed", "Not connected");
  }

  // "ok" | "refused" (the token is no good) | "offline" (no answer; try again)
  async function renew(token) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    let response;
    try {
      response = await fetch(base + "/session", {
        method: "POST",
        headers: headers,
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      return "offline";
    }
    if (response.status === 401 || response.status === 403) return "refused";
    if (!response.ok) return "offline";
    const session = await response.json();
    validUntil = Date.now() + session.lifetimeSeconds * 1000;
    byId("location").textContent = session.locationDescription;
    clearTimeout(renewTimer);
    renewTimer = setTimeout(keepRenewing, session.lifetimeSeconds * 500);
    return "ok";
  }

  async function keepRenewing() {
    const outcome = await renew(null);
    if (outcome === "refused" || (outcome === "offline" && Date.now() >= validUntil)) {
      linkExpired();
    } else if (outcome === "offline") {
      renewTimer = setTimeout(keepRenewing, RETRY_MS);
    }
  }

  function connect(resume) {
    if (source) source.close();
    const query = resume && lastEventId !== null ? "?lastEventId=" + encodeURIComponent(lastEventId) : "";
    source = new EventSource(base + "/events" + query);
    source.onopen = function () {
      connections += 1;
      body.dataset.connections = String(connections);
      setConnection("live", "Live");
    };
    source.onmessage = function (event) {
      if (event.lastEventId) lastEventId = event.lastEventId;
      apply(JSON.parse(event.data));
    };
    source.onerror = function () {
      setConnection("reconnecting", "Reconnecting…");
      // CONNECTING: the browser retries by itself with Last-Event-ID. CLOSED: it gave up.
      if (source.readyState === EventSource.CLOSED) scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(async function () {
      const outcome = await renew(null);
      if (outcome === "ok") {
        connect(true);
      } else if (outcome === "refused" || Date.now() >= validUntil) {
        linkExpired();
      } else {
        scheduleReconnect();
      }
    }, RETRY_MS);
  }

  async function start() {
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    const token = match ? decodeURIComponent(match[1]) : null;
    const outcome = await renew(token);
    if (outcome === "offline") {
      setConnection("reconnecting", "Reconnecting…");
      setTimeout(start, RETRY_MS);
      return;
    }
    if (outcome === "refused") {
      linkExpired();
      return;
    }
    if (token) {
      // The cookie holds the credential now; keep it out of the address bar and history.
      history.replaceState(null, "", location.pathname + location.search);
    }
    byId("qr").src = base + "/qr.svg";
    connect(false);
  }

  start();
})();
