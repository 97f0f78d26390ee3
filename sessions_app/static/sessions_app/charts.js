/* Helpers shared by the Dashboard and the session page: number formats and Chart.js set-up. */
(function () {
  "use strict";
  var units = ["B", "KB", "MB", "GB", "TB", "PB"];

  function bytes(n) {
    n = Number(n) || 0;
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i && n < 100 ? 1 : 0) + " " + units[i];
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) { return "–"; }
    seconds = Math.round(seconds);
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
        m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) { return d + "d " + h + "h"; }
    if (h) { return h + "h " + String(m).padStart(2, "0") + "m"; }
    return m + "m " + String(s).padStart(2, "0") + "s";
  }

  function age(iso) {
    if (!iso) { return "–"; }
    return duration((Date.now() - new Date(iso).getTime()) / 1000) + " ago";
  }

  function number(n) { return (Number(n) || 0).toLocaleString(); }

  var palette = ["#417690", "#79aec8", "#e0a03a", "#5b8c5a", "#8e6c8a", "#c26d3f", "#3d6e70", "#a3a948",
                 "#6c7fd1", "#b05f7c"];

  function text(el, value) { el.textContent = value; return el; }

  function make(tag, attrs, children) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { el.textContent = attrs[k]; } else { el.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { el.appendChild(c); });
    return el;
  }

  function progress(percent, failed) {
    var bar = make("div", {"class": "up-progress" + (failed ? " up-failed" : ""), "role": "progressbar",
                           "aria-valuenow": percent, "aria-valuemin": "0", "aria-valuemax": "100"});
    var fill = make("div", {"class": "up-progress-fill"});
    fill.style.width = Math.min(100, percent) + "%";
    bar.appendChild(fill);
    bar.appendChild(make("span", {"class": "up-progress-text", text: percent.toFixed(1) + "%"}));
    return bar;
  }

  function badge(status, label) {
    return make("span", {"class": "up-badge up-" + status, text: label || status});
  }

  /* A bar chart (stacked) that can be given new data; labels are ISO times shown by `timeFormat`. */
  function barChart(canvas, timeFormat, yTitle) {
    return new window.Chart(canvas, {
      type: "bar",
      data: {labels: [], datasets: []},
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: {mode: "index", intersect: false},
        scales: {
          x: {stacked: true, ticks: {maxRotation: 0, autoSkip: true, maxTicksLimit: 8,
              callback: function (v) { return timeFormat(this.getLabelForValue(v)); }}},
          y: {stacked: true, beginAtZero: true, ticks: {precision: 0}, title: {display: !!yTitle, text: yTitle}}
        },
        plugins: {legend: {position: "bottom", labels: {boxWidth: 12}},
                  tooltip: {callbacks: {title: function (items) { return timeFormat(items[0].label, true); }}}}
      }
    });
  }

  function hourFormat(iso, long) {
    var d = new Date(iso);
    var hm = String(d.getHours()).padStart(2, "0") + ":00";
    return long ? d.toLocaleDateString() + " " + hm : hm;
  }

  function dayFormat(iso) {
    var d = new Date(iso);
    return d.toLocaleDateString(undefined, {month: "short", day: "numeric"});
  }

  function minuteFormat(iso) {
    var d = new Date(iso);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  window.uploaderCharts = {bytes: bytes, duration: duration, age: age, number: number, palette: palette,
                           make: make, text: text, progress: progress, badge: badge, barChart: barChart,
                           hourFormat: hourFormat, dayFormat: dayFormat, minuteFormat: minuteFormat};
})();
