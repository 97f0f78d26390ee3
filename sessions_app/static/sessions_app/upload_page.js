// The project upload page: collect dropped or chosen files (folders walked in full), send the
// manifest, then the bytes over tus (tus-js-client, a few files in flight), and show both phases.
// The list is virtualized: only the rows in view exist in the DOM, so thousands stay smooth.
(function () {
  "use strict";
  var root = document.getElementById("uploader");
  var ROW = 24, IN_FLIGHT = 5, CHUNK = 16 * 1024 * 1024, POLL_MS = 2000;
  var storeKey = "uploader:" + root.dataset.project;
  var rows = [], queue = [], active = 0, sessionId = null, totalBytes = 0, sentBytes = 0;

  function csrf() {
    var m = document.cookie.match(/(?:^|; )csrftoken=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  function size(n) {
    var u = ["bytes", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1024 && i < 4) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + u[i];
  }

  // -- the virtualized list ---------------------------------------------------------------------
  var box = document.getElementById("rows"), spacer = document.getElementById("rows-spacer");
  var shown = {}, drawing = false;
  function redraw() { if (!drawing) { drawing = true; requestAnimationFrame(draw); } }
  function describe(r) {
    if (r.state === "refused") return "refused: " + r.reason;
    if (r.state === "error") return "error: " + r.reason;
    if (r.state === "done") return "received (" + size(r.size) + ")";
    if (r.state === "sending") return (r.size ? Math.floor(100 * r.sent / r.size) : 100) + "% of " + size(r.size);
    return "waiting (" + size(r.size) + ")";
  }
  function draw() {
    drawing = false;
    spacer.style.height = rows.length * ROW + "px";
    var first = Math.max(0, Math.floor(box.scrollTop / ROW) - 5);
    var last = Math.min(rows.length, first + Math.ceil(box.clientHeight / ROW) + 10);
    var keep = {};
    for (var i = first; i < last; i++) {
      var el = shown[i];
      if (!el) {
        el = document.createElement("div");
        el.setAttribute("role", "listitem");
        el.style.top = i * ROW + "px";
        box.appendChild(el);
        shown[i] = el;
      }
      keep[i] = true;
      el.className = "row " + rows[i].state;
      el.textContent = rows[i].path + " — " + describe(rows[i]);
    }
    Object.keys(shown).forEach(function (k) { if (!keep[k]) { box.removeChild(shown[k]); delete shown[k]; } });
    var pct = totalBytes ? 100 * sentBytes / totalBytes : 100;
    document.querySelector("#bytes-bar > div").style.width = pct.toFixed(1) + "%";
    document.getElementById("bytes-text").textContent = size(sentBytes) + " of " + size(totalBytes) +
      " (" + pct.toFixed(1) + "%)";
  }
  box.addEventListener("scroll", redraw);

  // -- collecting files ---------------------------------------------------------------------------
  function readAll(reader) {  // Chrome answers at most 100 entries per call: read until an empty batch
    return new Promise(function (resolve, reject) {
      var all = [];
      (function more() {
        reader.readEntries(function (batch) {
          if (!batch.length) { resolve(all); return; }
          all = all.concat(batch);
          more();
        }, reject);
      })();
    });
  }
  function walk(entry, out) {
    if (entry.isFile) {
      return new Promise(function (resolve, reject) {
        entry.file(function (f) { out.push({file: f, path: entry.fullPath.replace(/^\//, "")}); resolve(); }, reject);
      });
    }
    if (!entry.isDirectory) return Promise.resolve();
    return readAll(entry.createReader()).then(function (entries) {
      return entries.reduce(function (p, e) { return p.then(function () { return walk(e, out); }); },
                            Promise.resolve());
    });
  }
  var drop = document.getElementById("drop");
  drop.addEventListener("dragover", function (e) { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
  drop.addEventListener("drop", function (e) {
    e.preventDefault();
    drop.classList.remove("over");
    var entries = Array.prototype.map.call(e.dataTransfer.items, function (i) { return i.webkitGetAsEntry(); })
      .filter(Boolean), out = [];
    entries.reduce(function (p, en) { return p.then(function () { return walk(en, out); }); }, Promise.resolve())
      .then(function () { start(out); });
  });
  ["pick-files", "pick-folder"].forEach(function (id) {
    var input = document.getElementById(id);
    input.addEventListener("change", function () {
      var out = Array.prototype.map.call(input.files, function (f) {
        return {file: f, path: f.webkitRelativePath || f.name};
      });
      input.value = "";
      start(out);
    });
  });

  // -- manifest, then bytes -----------------------------------------------------------------------
  function saved() {
    try { return JSON.parse(localStorage.getItem(storeKey) || "null"); } catch (e) { return null; }
  }
  function start(list) {
    if (!list.length || active) return;
    list.forEach(function (x) { x.path = x.path.normalize("NFC"); });
    var before = saved();
    if (before && list.every(function (x) { return before.urls[x.path]; })) {
      begin(before.session, list.map(function (x) { return {path: x.path, file: x.file, url: before.urls[x.path]}; }),
            []);
      return;
    }
    document.getElementById("summary").textContent = "Sending the list of " + list.length + " files…";
    var body = JSON.stringify({files: list.map(function (x) {
      return {path: x.path, size: x.file.size, type: x.file.type};
    })});
    fetch(root.dataset.manifestUrl, {method: "POST", credentials: "same-origin", body: body,
                                     headers: {"Content-Type": "application/json", "X-CSRFToken": csrf()}})
      .then(function (r) { return r.json().then(function (d) { return {ok: r.ok, d: d}; }); })
      .then(function (res) {
        if (!res.ok) { document.getElementById("summary").textContent = "Refused: " + res.d.error; return; }
        var files = {}, urls = {};
        list.forEach(function (x) { files[x.path] = x.file; });
        var accepted = res.d.files.map(function (f) {
          urls[f.path] = f.upload_url;
          return {path: f.path, file: files[f.path], url: f.upload_url};
        });
        localStorage.setItem(storeKey, JSON.stringify({session: res.d.session, urls: urls}));
        begin(res.d.session, accepted, res.d.refused);
      });
  }
  function begin(session, accepted, refused) {
    sessionId = session;
    rows = accepted.map(function (a) {
      return {path: a.path, size: a.file.size, file: a.file, url: a.url, state: "waiting", sent: 0};
    }).concat(refused.map(function (r) { return {path: r.path, size: 0, state: "refused", reason: r.reason}; }));
    queue = rows.filter(function (r) { return r.state === "waiting"; });
    totalBytes = queue.reduce(function (n, r) { return n + r.size; }, 0);
    sentBytes = 0;
    var link = document.createElement("a");
    link.href = root.dataset.sessionAdmin + session + "/change/";
    link.textContent = "session #" + session;
    var summary = document.getElementById("summary");
    summary.textContent = accepted.length + " files accepted, " + refused.length + " refused: ";
    summary.appendChild(link);
    redraw();
    next();
    poll();
  }
  function next() {
    while (active < IN_FLIGHT && queue.length) send(queue.shift());
  }
  function progress(r, sent) { sentBytes += sent - r.sent; r.sent = sent; redraw(); }
  function send(r) {
    active++;
    r.state = "sending";
    var upload = new tus.Upload(r.file, {
      uploadUrl: r.url, chunkSize: CHUNK, retryDelays: [0, 1000, 3000, 5000, 10000, 30000],
      headers: {"X-CSRFToken": csrf()}, storeFingerprintForResuming: false,
      onProgress: function (sent) { progress(r, sent); },
      onSuccess: function () { active--; progress(r, r.size); r.state = "done"; redraw(); next(); },
      onError: function (err) {
        active--;
        r.state = "error";
        r.reason = String((err && err.message) || err).slice(0, 300);
        redraw();
        next();
      }
    });
    upload.start();
  }
  window.addEventListener("beforeunload", function (e) {
    if (active) { e.preventDefault(); e.returnValue = ""; }
  });

  // -- phase 2 ------------------------------------------------------------------------------------
  function poll() {
    var url = root.dataset.statusUrl.replace("/0/", "/" + sessionId + "/");
    fetch(url, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (d) {
      document.querySelector("#processing-bar > div").style.width = d.processed_percent + "%";
      document.getElementById("processing-text").textContent = d.processed + " of " + d.found + " files (" +
        d.uploaded + " sent, " + d.failed + " failed) ";
      var phase = document.getElementById("phase");
      phase.textContent = d.phase;
      phase.dataset.phase = d.phase;
      if (d.phase === "done") {
        localStorage.removeItem(storeKey);
        var files = document.createElement("a");
        files.href = root.dataset.filesAdmin + "?session__id__exact=" + sessionId;
        files.id = "files-link";
        files.textContent = " — see the files and their thumbnails";
        document.getElementById("summary").appendChild(files);
      } else {
        setTimeout(poll, POLL_MS);
      }
    }, function () { setTimeout(poll, POLL_MS); });
  }
})();
