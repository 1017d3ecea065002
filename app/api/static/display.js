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
  // The page's words in the display's languages. The language is the store's setting, else the
  // browser's Accept-Language (the session answer says which); before that answer, the browser's.
  const WORDS = {
    en: {
      locale: "en-GB",
      status: {
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
      },
      title: "Pay with Vipps MobilePay",
      purchase: "Your purchase",
      tip: "Tip",
      qr: "QR code: scan it with the Vipps or MobilePay app",
      connecting: "Connecting…",
      live: "Live",
      reconnecting: "Reconnecting…",
      closed: "Not connected",
    },
    nb: {
      locale: "nb-NO",
      status: {
        loading: ["Et øyeblikk", ""],
        idle: ["Skann for å betale", "Åpne Vipps- eller MobilePay-appen og skann koden"],
        scan: ["Skann for å betale", "Åpne Vipps- eller MobilePay-appen og skann koden"],
        waiting: ["Skannet", "Kassereren slår inn kjøpet ditt"],
        identifying: ["Et øyeblikk", "Sjekker medlemskapet ditt"],
        requesting: ["Et øyeblikk", "Sender betalingen til appen din"],
        approve: ["Godkjenn i appen", "Sjekk telefonen og godkjenn betalingen"],
        cancelling: ["Avbryter", "Et øyeblikk"],
        authorized: ["Godkjent", "Takk"],
        paid: ["Betalt", "Takk for handelen"],
        refunded: ["Refundert", "Pengene er på vei tilbake"],
        declined: ["Avvist", "Betalingen ble avvist i appen"],
        expired: ["Utløpt", "Betalingen ble ikke godkjent i tide"],
        cancelled: ["Avbrutt", "Kjøpet ble avbrutt"],
        failed: ["Betalingen mislyktes", "Spør kassereren"],
        "link-expired": ["Lenken er utløpt", "Åpne kundeskjermen på nytt fra kassen"],
      },
      title: "Betal med Vipps MobilePay",
      purchase: "Ditt kjøp",
      tip: "Tips",
      qr: "QR-kode: skann den med Vipps- eller MobilePay-appen",
      connecting: "Kobler til …",
      live: "Tilkoblet",
      reconnecting: "Kobler til på nytt …",
      closed: "Ikke tilkoblet",
    },
    da: {
      locale: "da-DK",
      status: {
        loading: ["Et øjeblik", ""],
        idle: ["Scan for at betale", "Åbn Vipps- eller MobilePay-appen, og scan koden"],
        scan: ["Scan for at betale", "Åbn Vipps- eller MobilePay-appen, og scan koden"],
        waiting: ["Scannet", "Ekspedienten slår dit køb ind"],
        identifying: ["Et øjeblik", "Vi tjekker dit medlemskab"],
        requesting: ["Et øjeblik", "Betalingen sendes til din app"],
        approve: ["Godkend i appen", "Tjek din telefon, og godkend betalingen"],
        cancelling: ["Annullerer", "Et øjeblik"],
        authorized: ["Godkendt", "Tak"],
        paid: ["Betalt", "Tak for dit køb"],
        refunded: ["Refunderet", "Pengene er på vej tilbage"],
        declined: ["Afvist", "Betalingen blev afvist i appen"],
        expired: ["Udløbet", "Betalingen blev ikke godkendt i tide"],
        cancelled: ["Annulleret", "Købet blev annulleret"],
        failed: ["Betalingen mislykkedes", "Spørg ekspedienten"],
        "link-expired": ["Linket er udløbet", "Åbn kundeskærmen igen fra kassen"],
      },
      title: "Betal med Vipps MobilePay",
      purchase: "Dit køb",
      tip: "Drikkepenge",
      qr: "QR-kode: scan den med Vipps- eller MobilePay-appen",
      connecting: "Forbinder …",
      live: "Forbundet",
      reconnecting: "Genopretter forbindelsen …",
      closed: "Ikke forbundet",
    },
    fi: {
      locale: "fi-FI",
      status: {
        loading: ["Hetkinen", ""],
        idle: ["Maksa skannaamalla", "Avaa Vipps- tai MobilePay-sovellus ja skannaa koodi"],
        scan: ["Maksa skannaamalla", "Avaa Vipps- tai MobilePay-sovellus ja skannaa koodi"],
        waiting: ["Skannattu", "Kassa kirjaa ostoksiasi"],
        identifying: ["Hetkinen", "Jäsenyyttäsi tarkistetaan"],
        requesting: ["Hetkinen", "Maksu lähetetään sovellukseesi"],
        approve: ["Hyväksy sovelluksessa", "Tarkista puhelimesi ja hyväksy maksu"],
        cancelling: ["Peruutetaan", "Hetkinen"],
        authorized: ["Hyväksytty", "Kiitos"],
        paid: ["Maksettu", "Kiitos ostoksestasi"],
        refunded: ["Hyvitetty", "Rahat palautetaan sinulle"],
        declined: ["Hylätty", "Maksu hylättiin sovelluksessa"],
        expired: ["Vanhentunut", "Maksua ei hyväksytty ajoissa"],
        cancelled: ["Peruutettu", "Osto peruutettiin"],
        failed: ["Maksu epäonnistui", "Kysy kassalta"],
        "link-expired": ["Linkki on vanhentunut", "Avaa asiakasnäyttö uudelleen kassalta"],
      },
      title: "Maksa Vipps MobilePaylla",
      purchase: "Ostoksesi",
      tip: "Tippi",
      qr: "QR-koodi: skannaa se Vipps- tai MobilePay-sovelluksella",
      connecting: "Yhdistetään…",
      live: "Yhteys toimii",
      reconnecting: "Yhdistetään uudelleen…",
      closed: "Ei yhteyttä",
    },
  };
  const LANGUAGE_OF_TAG = { nb: "nb", no: "nb", nn: "nb", da: "da", fi: "fi", en: "en" };

  function browserLanguage() {
    for (const tag of navigator.languages || [navigator.language || ""]) {
      const language = LANGUAGE_OF_TAG[tag.split("-")[0].toLowerCase()];
      if (language) return language;
    }
    return "en";
  }

  let words = WORDS[browserLanguage()];
  let connectionState = "connecting";

  function useLanguage(language) {
    words = WORDS[language] || WORDS.en;
    document.documentElement.lang = language in WORDS ? language : "en";
    document.title = words.title;
    byId("purchase").textContent = words.purchase;
    byId("qr").alt = words.qr;
    body.dataset.language = document.documentElement.lang;
    setConnection(connectionState);
    render(body.dataset.status || "loading", current);
  }

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

  // Minor units as the display's locale writes money: 34900 NOK → "349,00 kr" (nb-NO).
  function money(value, currency) {
    return new Intl.NumberFormat(words.locale, {
      style: "currency",
      currency: currency,
      minimumFractionDigits: 2,
      maximumFractionDigits: 2,
    }).format(value / 100);
  }

  function render(status, view) {
    const [headline, subline] = words.status[status] || words.status.idle;
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
    tip.textContent = view && view.tip ? words.tip + " " + money(view.tip, view.amount.currency) : "";
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

  function setConnection(state) {
    connectionState = state;
    body.dataset.connection = state;
    byId("connection").textContent = words[state];
  }

  function linkExpired() {
    if (source) source.close();
    clearTimeout(renewTimer);
    clearTimeout(reconnectTimer);
    clearTimeout(holdTimer);
    current = null;
    render("link-expired", null);
    setConnection("closed");
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
    if (session.language !== body.dataset.language) useLanguage(session.language);
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
      setConnection("live");
    };
    source.onmessage = function (event) {
      if (event.lastEventId) lastEventId = event.lastEventId;
      apply(JSON.parse(event.data));
    };
    source.onerror = function () {
      setConnection("reconnecting");
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
      setConnection("reconnecting");
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

  useLanguage(browserLanguage());
  start();
})();
