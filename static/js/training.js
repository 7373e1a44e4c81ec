// Models page: each training run with a history draws its loss curve as an inline SVG (no chart library);
// runs still queued or running poll their live JSON every 2 s and move the bar, label, log and curve.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 600, H = 200, PAD = 28;
  var COLOURS = { loss: "#b3472d", infonce: "#1f5fd6", triplet: "#2f7d4f" };

  function el(name, attrs) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function draw(run, history) {
    var names = Object.keys(COLOURS).filter(function (k) { return (history[k] || []).length; });
    var fig = run.querySelector('[data-field="chart"]');
    if (!names.length || !fig) return;
    var svg = fig.querySelector("svg");
    Array.prototype.slice.call(svg.childNodes).forEach(function (n) { if (n.nodeName !== "title") svg.removeChild(n); });
    var all = [].concat.apply([], names.map(function (k) { return history[k]; }));
    var lo = Math.min.apply(null, all), hi = Math.max.apply(null, all);
    if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
    var n = Math.max.apply(null, names.map(function (k) { return history[k].length; }));
    function x(i) { return PAD + (n > 1 ? i * (W - 2 * PAD) / (n - 1) : (W - 2 * PAD) / 2); }
    function y(v) { return H - PAD - (v - lo) * (H - 2 * PAD) / (hi - lo); }
    svg.appendChild(el("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, stroke: "#ccc" }));
    svg.appendChild(el("line", { x1: PAD, y1: PAD, x2: PAD, y2: H - PAD, stroke: "#ccc" }));
    [[hi, PAD], [lo, H - PAD]].forEach(function (t) {
      var label = el("text", { x: 2, y: t[1] + 4, "font-size": 11, fill: "#6b645c" });
      label.textContent = t[0].toFixed(3);
      svg.appendChild(label);
    });
    var xl = el("text", { x: W - PAD, y: H - 8, "font-size": 11, fill: "#6b645c", "text-anchor": "end" });
    xl.textContent = "epoch " + n;
    svg.appendChild(xl);
    names.forEach(function (k) {
      var pts = history[k].map(function (v, i) { return x(i).toFixed(1) + "," + y(v).toFixed(1); }).join(" ");
      svg.appendChild(el("polyline", { points: pts, fill: "none", stroke: COLOURS[k], "stroke-width": 2, "data-series": k }));
    });
    fig.querySelector('[data-field="legend"]').innerHTML = names.map(function (k) {
      var last = history[k][history[k].length - 1];
      return '<span style="color:' + COLOURS[k] + '">■</span> ' + k + " " + last.toFixed(4);
    }).join(" · ");
    fig.hidden = false;
  }

  function show(run, data) {
    var pct = Math.round(Math.min(Math.max(data.progress, 0), 100));
    var bar = run.querySelector('[data-field="bar"]');
    bar.setAttribute("aria-valuenow", pct);
    bar.firstElementChild.style.width = pct + "%";
    var label = pct + "%";
    var pp = data.phase_progress || {};
    if (pp.total) {  // items of the current phase, e.g. photos through the towers during "features"
      label += " · " + pp.phase + " " + pp.done + "/" + pp.total;
      if (pp.rate) label += " · " + pp.rate.toFixed(1) + " items/s";
      if (pp.eta_s !== null && pp.eta_s !== undefined) label += " · " + Math.round(pp.eta_s) + " s left";
    }
    if (data.loss !== null) label += " · loss " + data.loss.toFixed(4);
    if (data.step) label += " · step " + data.step;
    run.querySelector('[data-field="label"]').textContent = label;
    var status = run.querySelector('[data-field="status"]');
    status.textContent = data.status;
    status.className = "pill pill-" + data.status;
    run.querySelector('[data-field="phase"]').textContent = data.phase;
    var log = run.querySelector('[data-field="log"]');
    if (log && data.log_tail) { log.textContent = data.log_tail; log.hidden = false; }
    draw(run, data.history || {});
  }

  function poll(run, live) {
    fetch(run.getAttribute("data-live-url"), { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) {
        show(run, data);
        if (live && !data.finished) window.setTimeout(function () { poll(run, true); }, 2000);
      })
      .catch(function () { if (live) window.setTimeout(function () { poll(run, true); }, 5000); });
  }

  document.querySelectorAll("article.run").forEach(function (run) {
    if (run.hasAttribute("data-live") || run.hasAttribute("data-history")) poll(run, run.hasAttribute("data-live"));
  });
})();
