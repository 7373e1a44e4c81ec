// Import job page: polls the job's JSON (data-poll-url) every second, moves the progress bar and the
// counts, and reloads the page once the job has finished so the server renders the full rejection list.
(function () {
  "use strict";
  var box = document.getElementById("import-job");
  if (!box || box.getAttribute("data-finished")) return;
  var url = box.getAttribute("data-poll-url");

  function field(name) { return box.querySelector('[data-field="' + name + '"]'); }

  function show(job) {
    ["percent", "processed", "total", "created", "updated", "unchanged", "rejected"].forEach(function (k) {
      var el = field(k);
      if (el) el.textContent = job[k];
    });
    var bar = field("bar");
    bar.setAttribute("aria-valuenow", job.percent);
    bar.firstElementChild.style.width = job.percent + "%";
    field("status").textContent = job.status;
    field("status").className = "pill pill-" + job.status;
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (job) {
        show(job);
        if (job.finished) window.location.reload();
        else window.setTimeout(poll, 1000);
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }
  poll();
})();
