// Remembers the outfit being built (its ids, as in /outfit?ids=...) so "Add to outfit" on a product
// page appends to it. Progressive enhancement: without JS the link opens an outfit of this item.
(function () {
  "use strict";
  var KEY = "outfit-ids";
  var MAX = 8;

  function stored() {
    try {
      return (localStorage.getItem(KEY) || "").split(",").filter(function (s) { return /^\d+$/.test(s); });
    } catch (e) {
      return [];
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var outfit = document.querySelector("[data-outfit-ids]");
    if (outfit) {
      try { localStorage.setItem(KEY, outfit.getAttribute("data-outfit-ids")); } catch (e) { /* private mode */ }
    }
    document.querySelectorAll("a[data-add-to-outfit]").forEach(function (link) {
      if (link.hasAttribute("data-has-outfit")) return;  // the page already knows the outfit
      var id = link.getAttribute("data-add-to-outfit");
      var ids = stored().filter(function (x) { return x !== id; }).slice(0, MAX - 1);
      if (!ids.length) return;
      ids.push(id);
      link.href = link.pathname + "?ids=" + ids.join(",");
    });
  });
})();
