// Live refresh of the status page: fetch the server-rendered #live fragment and swap it in.
// The server escapes everything it renders; this script never builds markup from data itself.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) {
    return;
  }
  var src = live.getAttribute("data-src");
  var every = parseInt(live.getAttribute("data-every"), 10) || 2000;
  var note = document.getElementById("refresh");
  var count = 0;
  function schedule() {
    window.setTimeout(tick, every);
  }
  function tick() {
    if (document.hidden) {
      schedule();
      return;
    }
    fetch(src, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        count += 1;
        live.setAttribute("data-refreshed", String(count));
        live.removeAttribute("data-stale");
        if (note) {
          note.textContent = "live, updated " + new Date().toLocaleTimeString();
        }
      })
      .catch(function (e) {
        live.setAttribute("data-stale", "true");
        if (note) {
          note.textContent = "cannot reach the server (" + e.message + "); showing the last state";
        }
      })
      .then(schedule, schedule);
  }
  schedule();
})();
