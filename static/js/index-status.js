// Product page (merchandisers): while the product is "indexing…", poll its index status every 2 s and
// say so once its vectors for the active model are stored; if the page could not show recommendations
// yet (no vectors when it was rendered), reload it once so similar items and complete-the-look appear.
(function () {
  "use strict";
  var box = document.getElementById("index-status");
  if (!box || !box.hasAttribute("data-pending")) return;
  function poll() {
    fetch(box.getAttribute("data-status-url"), { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (s) {
        if (s.embedded) {
          box.removeAttribute("data-pending");
          box.innerHTML = '<span class="pill pill-ready">indexed</span> Embedded for the active model v' +
            s.version_id + ": searchable and recommended.";
          if (document.querySelector("[data-recs-unavailable]")) window.location.reload();
        } else {
          window.setTimeout(poll, 2000);
        }
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1000);
})();
