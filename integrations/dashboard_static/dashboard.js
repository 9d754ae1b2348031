// cbsync dashboard: refreshes the server-rendered tiles from /api/breakers.
//
// Plain JavaScript, no build step.  Breaker names and reasons are data: they
// are only ever written with textContent and setAttribute, never as HTML.
// Each formatting function mirrors the one of the same name in
// cbsync/integrations/dashboard.py, so that a refreshed tile reads exactly
// as the server rendered it (a browser test compares them).
(function () {
  "use strict";

  var body = document.body;
  var api = body.dataset.api;
  var pollMs = Number(body.dataset.poll) || 1000;
  var live = body.dataset.live === "1";
  var size = Number(body.dataset.size) || 2;
  var labels = JSON.parse(body.dataset.labels);
  var grid = document.querySelector("main.tiles");
  var template = document.getElementById("tile-template");
  var banner = document.querySelector('[data-field="banner"]');
  var notice = document.querySelector('[data-field="notice"]');
  var empty = document.querySelector('[data-field="empty"]');
  var updated = document.querySelector('[data-field="updated"]');
  var filterInput = document.querySelector('input[name="q"]');
  var tokenInput = document.querySelector('input[name="token"]');
  var operatorInput = document.querySelector('input[name="operator"]');
  var SPARK_HEIGHT = 24;
  var DASH = "\u2013";

  // name -> tile element (a Map: names are arbitrary strings, never selectors)
  var tiles = new Map();
  grid.querySelectorAll("article.tile").forEach(function (tile) {
    tiles.set(tile.dataset.name, tile);
  });

  // -- formatting (mirrors dashboard.py) ------------------------------------

  function fixed(value, digits) {
    var scale = Math.pow(10, digits);
    return (Math.floor(value * scale + 0.5) / scale).toFixed(digits);
  }

  function percent(rate) {
    return rate === null ? DASH : fixed(rate * 100, 1) + "%";
  }

  function perSecond(rate) {
    if (rate === null) return DASH;
    return rate < 10 ? fixed(rate, 1) : fixed(rate, 0);
  }

  function latency(seconds) {
    if (seconds === null) return DASH;
    if (seconds < 0.001) return fixed(seconds * 1e6, 0) + " \u00b5s";
    if (seconds < 1) return fixed(seconds * 1e3, 1) + " ms";
    return fixed(seconds, 2) + " s";
  }

  function pad2(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function duration(seconds) {
    var whole = Math.max(0, Math.floor(seconds));
    if (whole < 60) return whole + "s";
    if (whole < 3600) return Math.floor(whole / 60) + "m " + pad2(whole % 60) + "s";
    if (whole < 86400) {
      return Math.floor(whole / 3600) + "h " + pad2(Math.floor((whole % 3600) / 60)) + "m";
    }
    return Math.floor(whole / 86400) + "d " + Math.floor((whole % 86400) / 3600) + "h";
  }

  function since(seconds) {
    return seconds === null ? "" : "for " + duration(seconds);
  }

  function retry(seconds) {
    if (seconds === null) return "";
    if (seconds <= 0) return "trial call due";
    return "retry in " + duration(Math.ceil(seconds));
  }

  function clockTime(at) {
    return at === null ? "" : at.substring(11, 19);
  }

  function sparkPath(values, top) {
    if (top === null) {
      top = 0;
      values.forEach(function (v) {
        if (v !== null && v > top) top = v;
      });
    }
    if (!top || top <= 0) top = 1;
    var offset = size - values.length;
    var parts = [];
    var move = true;
    values.forEach(function (value, index) {
      if (value === null) {
        move = true;
        return;
      }
      var y = SPARK_HEIGHT - 1 - Math.min(value / top, 1) * (SPARK_HEIGHT - 2);
      parts.push((move ? "M" : "L") + (offset + index) + "," + fixed(y, 1));
      move = false;
    });
    return parts.join("");
  }

  function bannerText(doc) {
    if (doc.available) return "";
    var text = "Fleet state unavailable since " +
      (doc.unavailable_since ? clockTime(doc.unavailable_since) : "?") + " UTC (" + doc.error + ")";
    if (doc.read_at) text += "; showing the state read at " + clockTime(doc.read_at) + " UTC";
    return text + ".";
  }

  var METRICS = [
    ["calls_per_second", perSecond],
    ["rejected_per_second", perSecond],
    ["failure_rate", percent],
    ["slow_call_rate", percent],
    ["p99_latency", latency],
  ];

  // -- tiles -----------------------------------------------------------------

  function field(tile, name) {
    return tile.querySelector('[data-field="' + name + '"]');
  }

  function newTile(name) {
    var tile = template.content.firstElementChild.cloneNode(true);
    tile.dataset.name = name;
    var heading = tile.querySelector("h2.name");
    heading.textContent = name;
    heading.setAttribute("title", name);
    return tile;
  }

  function setState(element, state) {
    var label = labels[state];
    var icon = document.createElement("span");
    icon.setAttribute("class", "icon");
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = label[0];
    element.replaceChildren(icon, document.createTextNode(" " + label[1]));
  }

  function transitionItem(entry) {
    var item = document.createElement("li");
    var at = document.createElement("time");
    at.textContent = clockTime(entry.at);
    var why = document.createElement("span");
    why.setAttribute("class", "why");
    why.textContent = entry.reason;
    var move = " " + labels[entry.old][1] + " \u2192 " + labels[entry["new"]][1] + " ";
    item.append(at, document.createTextNode(move), why);
    return item;
  }

  function fill(tile, entry, now) {
    tile.className = "tile state-" + entry.state;
    if (tile.dataset.state !== entry.state) {
      setState(field(tile, "state"), entry.state);
      tile.dataset.state = entry.state;
    }
    field(tile, "reason").textContent = entry.reason === null ? "no state change yet" : entry.reason;
    tile.cbSince = entry.seconds_in_state;
    tile.cbRetry = entry.retry_after;
    tile.cbAt = now;
    field(tile, "since").textContent = since(entry.seconds_in_state);
    field(tile, "retry").textContent = retry(entry.retry_after);
    METRICS.forEach(function (metric) {
      field(tile, metric[0]).textContent = metric[1](entry[metric[0]]);
    });
    field(tile, "spark_calls").setAttribute("d", sparkPath(entry.history.calls_per_second, null));
    field(tile, "spark_failures").setAttribute("d", sparkPath(entry.history.failure_rate, 1));
    field(tile, "transitions").replaceChildren.apply(
      field(tile, "transitions"), entry.transitions.map(transitionItem)
    );
  }

  function update(doc) {
    var now = performance.now();
    var seen = new Set();
    doc.breakers.forEach(function (entry, index) {
      var tile = tiles.get(entry.name);
      if (!tile) {
        tile = newTile(entry.name);
        tiles.set(entry.name, tile);
      }
      fill(tile, entry, now);
      seen.add(entry.name);
      // Keep the server's order: open and half-open first.
      if (grid.children[index] !== tile) grid.insertBefore(tile, grid.children[index] || null);
    });
    tiles.forEach(function (tile, name) {
      if (!seen.has(name)) {
        tile.remove();
        tiles.delete(name);
      }
    });
    updated.textContent = clockTime(doc.read_at);
    var text = bannerText(doc);
    banner.textContent = text;
    banner.hidden = text === "";
    applyFilter();
    // How many refreshes the page has shown: something to wait for in tests.
    body.dataset.updates = String(Number(body.dataset.updates || 0) + 1);
  }

  function tick() {
    var now = performance.now();
    tiles.forEach(function (tile) {
      if (tile.cbAt === undefined) return;
      var elapsed = (now - tile.cbAt) / 1000;
      if (tile.cbSince !== null) field(tile, "since").textContent = since(tile.cbSince + elapsed);
      if (tile.cbRetry !== null) field(tile, "retry").textContent = retry(tile.cbRetry - elapsed);
    });
  }

  // -- filtering -------------------------------------------------------------

  function applyFilter() {
    var query = filterInput.value.toLowerCase();
    var shown = 0;
    tiles.forEach(function (tile, name) {
      tile.hidden = name.toLowerCase().indexOf(query) < 0;
      if (!tile.hidden) shown += 1;
    });
    empty.hidden = shown > 0;
  }

  filterInput.form.addEventListener("submit", function (event) {
    event.preventDefault();
  });
  filterInput.addEventListener("input", function () {
    applyFilter();
    var url = new URL(window.location.href);
    if (filterInput.value) url.searchParams.set("q", filterInput.value);
    else url.searchParams.delete("q");
    window.history.replaceState(null, "", url.toString());
  });

  // -- polling ---------------------------------------------------------------

  var timer = null;
  var inFlight = false;
  var again = false;

  function poll() {
    if (inFlight) {
      again = true;
      return;
    }
    clearTimeout(timer);
    inFlight = true;
    fetch(api + "/breakers", { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(update)
      .catch(function (error) {
        banner.textContent = "Connection to the dashboard lost (" + error.message + "); retrying.";
        banner.hidden = false;
      })
      .finally(function () {
        inFlight = false;
        if (again) {
          again = false;
          poll();
        } else {
          timer = setTimeout(poll, pollMs);
        }
      });
  }

  // -- actions ---------------------------------------------------------------

  function say(text) {
    notice.textContent = text;
  }

  grid.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button || !tokenInput) return;
    var action = button.dataset.action;
    var name = button.closest("article.tile").dataset.name;
    var token = tokenInput.value.trim();
    if (!token) {
      say("Enter the operator token to " + action + " a breaker.");
      tokenInput.focus();
      return;
    }
    if (!window.confirm(action + " breaker " + name + "?")) return;
    var request = { name: name, operator: operatorInput.value };
    if (action === "trip") request.reason = "dashboard";
    fetch(api + "/" + action, {
      method: "POST",
      cache: "no-store",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + token },
      body: JSON.stringify(request),
    })
      .then(function (response) {
        return response.json().then(function (reply) {
          if (!response.ok) throw new Error(reply.error || "HTTP " + response.status);
          say(name + ": " + action + " done, now " + labels[reply.state][1] + ".");
        });
      })
      .catch(function (error) {
        say(name + ": " + action + " refused: " + error.message);
      })
      .finally(poll);
  });

  applyFilter();
  if (live) {
    setInterval(tick, 1000);
    poll();
  }
})();
