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

// A controlled vocabulary field (colour, product type, audience): its text box for a new value is shown
// only while "Add a new …" is chosen in its select. Without JS the box stays visible.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("select[data-new-value]").forEach(function (select) {
      var box = document.querySelector("input[name='" + select.name + "_new']");
      if (!box) return;
      function sync() {
        var adding = select.value === select.getAttribute("data-new-value");
        box.hidden = !adding;
        if (adding && document.activeElement === select) box.focus();
      }
      select.addEventListener("change", sync);
      sync();
    });
  });
})();
