/* The session page's summary panel: counts every 2 s while the session runs, chart and reasons every 30 s. */
(function () {
  "use strict";
  var U, box, chart, data, ticks = 0;
  var ACTIVE = ["queued", "scanning", "uploading"];
  var PILLS = [["uploaded", "uploaded"], ["skipped", "skipped"], ["failed", "failed"], ["pending", "pending"],
               ["cancelled", "cancelled"]];

  function part(k) { return box.querySelector("[data-k='" + k + "']"); }

  function pills(d) {
    var holder = part("pills");
    holder.replaceChildren();
    PILLS.forEach(function (p) {
      if (p[0] === "cancelled" && !d.cancelled) { return; }
      var a = U.make("a", {"class": "up-pill up-pill-" + p[0], "data-status": p[0],
                           href: box.dataset.filesUrl + "&status__exact=" + p[0]});
      a.appendChild(document.createTextNode(p[1] + " "));
      a.appendChild(U.make("b", {text: U.number(d[p[0]])}));
      holder.appendChild(a);
    });
  }

  function counts(d) {
    var badge = part("status");
    badge.className = "up-badge up-" + d.status;
    badge.textContent = d.status_label;
    var bar = part("progress");
    bar.classList.toggle("up-failed", d.failed > 0);
    bar.setAttribute("aria-valuenow", d.progress);
    bar.querySelector(".up-progress-fill").style.width = Math.min(100, d.progress) + "%";
    bar.querySelector(".up-progress-text").textContent = d.progress.toFixed(1) + "% of " + U.number(d.found) + " files";
    var speed = part("speed");
    speed.textContent = U.bytes(d.bytes_uploaded) + " of " + U.bytes(d.bytes_total) + " · " +
      U.bytes(d.bytes_per_second) + "/s" + (d.eta_seconds !== null ? " · ETA " + U.duration(d.eta_seconds) : "");
    pills(d);
    part("status_line").textContent = d.status_line || "";
  }

  function detail(d) {
    var t = d.throughput;
    if (!chart) { chart = U.barChart(document.getElementById("up-session-chart"), U.minuteFormat, "files"); }
    chart.data.labels = t.labels;
    chart.data.datasets = [{label: "files uploaded" + (t.minutes_per_point > 1 ? " per " + t.minutes_per_point + " min" : " per minute"),
                            data: t.files, backgroundColor: U.palette[0]}];
    chart.update();
    var body = box.querySelector("#up-session-reasons tbody");
    body.replaceChildren();
    if (!d.failure_reasons.length) {
      var td = U.make("td", {"class": "up-muted", text: "No failures."});
      td.colSpan = 2;
      body.appendChild(U.make("tr", {}, [td]));
    }
    d.failure_reasons.forEach(function (r) {
      body.appendChild(U.make("tr", {}, [U.make("td", {text: r.reason}), U.make("td", {text: U.number(r.files)})]));
    });
  }

  function tick() {
    ticks++;
    var withDetail = ticks % 15 === 0;
    fetch(box.dataset.url + (withDetail ? "?detail=1" : ""), {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (d) {
        counts(d);
        if (withDetail) { detail(d); }
        if (ACTIVE.indexOf(d.status) >= 0) { setTimeout(tick, 2000); } else { location.reload(); }
      })
      .catch(function () { setTimeout(tick, 5000); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    U = window.uploaderCharts;
    box = document.getElementById("live-counts");
    if (!box) { return; }
    data = JSON.parse(document.getElementById("up-summary-data").textContent);
    counts(data);
    detail(data);
    box.dataset.loaded = "1";
    if (ACTIVE.indexOf(data.status) >= 0) { setTimeout(tick, 2000); }
  });
})();
