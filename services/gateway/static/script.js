/*! analytics-platform tracking snippet: page views (SPA too), outbound links, downloads, custom events.
 * <script defer src="https://HOST/js/script.js" data-key="WRITE_KEY"></script>
 * Options: data-api="https://other-host" (where to send), data-respect-dnt (honour Do-Not-Track / GPC),
 * data-manual (no automatic page views; call analytics.page()), data-hash (hash changes are page views).
 * API: analytics.track(name, props), analytics.page(props), analytics.identify(userId, traits), analytics.reset().
 * Calls made before this deferred script has run go to a queue that it replays, in order, when it loads:
 * <script>window.analytics=window.analytics||[];["track","page","identify","reset"].forEach(function(m){analytics[m]=analytics[m]||function(){analytics.push([m].concat([].slice.call(arguments)))}})</script>
 * Visitor id: a random anonymousId kept in localStorage (falls back to memory when storage is blocked). */
(function (w, d) {
  "use strict";
  var s = d.currentScript || d.querySelector("script[data-key][src*='/js/script.js']");
  if (!s) return;
  var key = s.getAttribute("data-key") || "";
  var base = s.getAttribute("data-api") || new URL(s.src, location.href).origin;
  var endpoint = base.replace(/\/+$/, "") + "/v1/batch";
  var nav = navigator;
  var off = s.hasAttribute("data-respect-dnt") &&
    (nav.doNotTrack == "1" || w.doNotTrack == "1" || nav.msDoNotTrack == "1" || nav.globalPrivacyControl === true);
  var hash = s.hasAttribute("data-hash");
  var mem = {};

  function uid() {
    if (w.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = (Math.random() * 16) | 0;
      return (c == "x" ? r : (r & 3) | 8).toString(16);
    });
  }
  function store(area, k, v) {
    try {
      var st = w[area];
      if (v === null) st.removeItem(k); else if (v !== undefined) st.setItem(k, v);
      return st.getItem(k);
    } catch (e) {
      if (v !== undefined) mem[k] = v;
      return mem[k] || null;
    }
  }
  function idFor(area, k) {
    return store(area, k) || store(area, k, uid()) || "";
  }

  function campaign() {
    var q = new URLSearchParams(location.search), c = {}, any = false;
    ["source", "medium", "campaign", "term", "content"].forEach(function (f) {
      var v = q.get("utm_" + f);
      if (v) { c[f == "campaign" ? "name" : f] = v; any = true; }
    });
    return any ? c : undefined;
  }

  function send(msg) {
    if (off || !key) return;
    msg.messageId = uid();
    msg.anonymousId = idFor("localStorage", "_an_id");
    var user = store("localStorage", "_an_uid");
    if (user) msg.userId = user;
    msg.timestamp = new Date().toISOString();
    msg.context = {
      page: { url: location.href, path: location.pathname, search: location.search, title: d.title, referrer: d.referrer },
      screen: { width: screen.width, height: screen.height },
      campaign: campaign(),
      sessionId: idFor("sessionStorage", "_an_sid"),
      locale: nav.language,
      library: { name: "analytics-snippet", version: "1" }
    };
    var body = JSON.stringify({ writeKey: key, batch: [msg], sentAt: msg.timestamp });
    var sent = false;
    try { sent = nav.sendBeacon(endpoint, new Blob([body], { type: "text/plain" })); } catch (e) { sent = false; }
    if (!sent && w.fetch) {
      fetch(endpoint, { method: "POST", body: body, keepalive: true, credentials: "omit",
        headers: { "Content-Type": "text/plain" } })["catch"](function () {});
    }
  }

  var last;
  function page(props) {
    var p = props || {};
    p.url = location.href; p.path = location.pathname; p.referrer = d.referrer; p.title = d.title;
    send({ type: "page", properties: p });
  }
  function auto() {
    var here = location.pathname + location.search + (hash ? location.hash : "");
    if (here === last) return;
    last = here;
    page();
  }

  var api = {
    track: function (name, props) { send({ type: "track", event: String(name), properties: props || {} }); },
    page: page,
    identify: function (userId, traits) {
      if (userId) store("localStorage", "_an_uid", String(userId));
      send({ type: "identify", traits: traits || {} });
    },
    reset: function () { store("localStorage", "_an_uid", null); store("localStorage", "_an_id", null); }
  };
  // The queue stub's calls ([method, ...args], pushed before this ran), replayed in order, each on its own.
  var queued = w.analytics;
  w.analytics = api;
  if (queued && queued.length) {
    for (var i = 0; i < queued.length; i++) {
      var call = queued[i];
      try { if (call && api[call[0]]) api[call[0]].apply(api, [].slice.call(call, 1)); } catch (e) {}
    }
  }

  var FILES = /\.(pdf|xlsx?|docx?|txt|rtf|csv|exe|key|pp[st]x?|7z|pkg|rar|gz|tgz|zip|avi|mov|mp4|mpe?g|wmv|midi?|mp3|wav|wma|dmg|apk|iso)$/i;
  function click(e) {
    if (e.type == "auxclick" && e.button != 1) return;
    var a = e.target && e.target.closest ? e.target.closest("a[href]") : null;
    if (!a || !/^https?:$/.test(a.protocol)) return;
    if (FILES.test(a.pathname)) api.track("File Download", { url: a.href });
    else if (a.host && a.host !== location.host) api.track("Outbound Link: Click", { url: a.href });
  }
  d.addEventListener("click", click, true);
  d.addEventListener("auxclick", click, true);

  if (s.hasAttribute("data-manual")) return;
  var h = w.history;
  ["pushState", "replaceState"].forEach(function (m) {
    var orig = h[m];
    if (!orig) return;
    h[m] = function () {
      var out = orig.apply(this, arguments);
      setTimeout(auto, 0);
      return out;
    };
  });
  w.addEventListener("popstate", auto);
  if (hash) w.addEventListener("hashchange", auto);
  if (d.visibilityState === "prerender") {
    d.addEventListener("visibilitychange", function once() {
      if (d.visibilityState === "visible") { d.removeEventListener("visibilitychange", once); auto(); }
    });
  } else {
    auto();
  }
})(window, document);
