/* The admin's Dashboard: one JSON answer (/api/overview/) drawn into tables and two charts, every 10 s. */
(function () {
  "use strict";
  var U, root, charts = {};

  function cell(content) {
    var td = document.createElement("td");
    if (typeof content === "string") { td.textContent = content; } else if (content) { td.appendChild(content); }
    return td;
  }

  function rows(section, list, empty, render) {
    var body = root.querySelector(section + " tbody");
    body.replaceChildren();
    if (!list.length) {
      var td = cell(empty);
      td.colSpan = 5;
      td.className = "up-muted";
      body.appendChild(U.make("tr", {}, [td]));
    }
    list.forEach(function (item) { body.appendChild(U.make("tr", {}, render(item).map(cell))); });
  }

  function link(href, label) { return U.make("a", {href: href, text: label}); }

  function lastSync(s) {
    if (!s) { return "never"; }
    var box = U.make("div", {}, [U.badge(s.status, s.status_label), U.progress(s.progress, s.status === "failed")]);
    box.appendChild(U.make("small", {"class": "up-muted", text: " " + U.age(s.finished || s.started)}));
    box.firstChild.after(U.make("span", {text: " "}), link(s.url, "#" + s.id));
    return box;
  }

  function datasets(series, key) {
    var out = series.projects.map(function (p, i) {
      return {label: p.project, data: p[key], backgroundColor: U.palette[i % U.palette.length], stack: "up"};
    });
    if (key === "files") {
      out.push({label: "failed", data: series.failed, backgroundColor: "#ba2121", stack: "failed"});
    }
    return out;
  }

  function chart(id, series, format) {
    if (!charts[id]) { charts[id] = U.barChart(document.getElementById(id), format, "files"); }
    charts[id].data.labels = series.labels;
    charts[id].data.datasets = datasets(series, "files");
    charts[id].update();
  }

  function draw(d) {
    rows("#up-projects", d.projects, "No projects yet.", function (p) {
      return [link(p.url, p.project), lastSync(p.last_session),
              U.number(p.today_files) + " · " + U.bytes(p.today_bytes),
              U.number(p.week_files) + " · " + U.bytes(p.week_bytes)];
    });
    rows("#up-live", d.live, "Nothing running.", function (s) {
      return [link(s.url, "#" + s.id + " " + s.project), U.badge(s.status, s.status_label),
              U.progress(s.progress, s.failed > 0), U.bytes(s.bytes_per_second) + "/s", U.duration(s.eta_seconds)];
    });
    rows("#up-reasons", d.failure_reasons, "No failures.", function (r) {
      return [r.reason, U.number(r.files)];
    });
    chart("up-chart-24h", d.throughput.hourly, U.hourFormat);
    chart("up-chart-30d", d.throughput.daily, U.dayFormat);
    U.text(document.getElementById("up-updated"), "Updated " + new Date(d.generated_at).toLocaleString());
    root.dataset.loaded = "1";
  }

  function load() {
    fetch(root.dataset.url, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(draw)
      .catch(function (e) { U.text(document.getElementById("up-updated"), "Could not load the figures: " + e.message); })
      .finally(function () { setTimeout(load, 10000); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    U = window.uploaderCharts;
    root = document.querySelector(".up-dashboard");
    load();
  });
})();
