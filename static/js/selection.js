/* Selecting the rows of a list for a bulk action (the Users table, Import Users' records).

   The markup, the same on both pages:
   - the list's element has data-selection; inside it, each row's checkbox has class
     row-check (disabled ones cannot be chosen), #check-page selects the page, an element
     with data-total holds how many rows match the filter, and #all-matching (a hidden
     input, "1" or "0") stands for all of them (_macros.html: select_all_offer);
   - #selection-count (data-noun="user") says what is selected;
   - buttons marked data-bulk act on the selection: enabled only when there is one. A
     data-question ("Import {n}?") becomes their hx-confirm, with the count filled in.
   window.cdsSelection.count() tells other scripts how many rows are selected. */
(function () {
  "use strict";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  function list() { return $("[data-selection]"); }
  function boxes() { return list() ? $all(".row-check:not(:disabled)", list()) : []; }
  function total() {
    var holder = list() && $("[data-total]", list());
    return holder ? parseInt(holder.getAttribute("data-total"), 10) || 0 : 0;
  }
  function allMatching() {
    var el = $("#all-matching");
    return !!el && el.value === "1";
  }
  function setAllMatching(on) {
    var el = $("#all-matching");
    if (el) el.value = on ? "1" : "0";
  }
  function count() {
    return allMatching() ? total() : boxes().filter(function (b) { return b.checked; }).length;
  }
  function counted(n, noun) { return n.toLocaleString() + " " + noun + (n === 1 ? "" : "s"); }

  // The count, the buttons, the row highlight and the "select all N matching" offer.
  function refresh() {
    if (!list()) return;
    var rows = boxes();
    var checked = rows.filter(function (b) { return b.checked; });
    var n = count();
    var label = $("#selection-count");
    var noun = (label && label.getAttribute("data-noun")) || "row";
    if (label) {
      label.textContent = n === 0 ? "None selected"
        : allMatching() ? "All " + counted(n, noun) + " matching selected" : counted(n, noun) + " selected";
      label.classList.toggle("has-selection", n > 0);
    }
    $all("[data-bulk]").forEach(function (b) {
      b.disabled = n === 0;
      var question = b.getAttribute("data-question");
      if (question) b.setAttribute("hx-confirm", question.replace("{n}", counted(n, noun)));
    });
    $all(".row-check", list()).forEach(function (b) {
      b.closest("tr").classList.toggle("selected", b.checked || (allMatching() && !b.disabled));
    });
    var page = $("#check-page");
    if (page) {
      page.checked = rows.length > 0 && checked.length === rows.length;
      page.indeterminate = checked.length > 0 && checked.length < rows.length;
    }
    var offer = $("#select-all-offer"), done = $("#select-all-done");
    if (offer && done) {
      var allOnPage = rows.length > 0 && checked.length === rows.length;
      offer.hidden = !(allOnPage && !allMatching() && total() > rows.length);
      done.hidden = !allMatching();
    }
  }

  document.addEventListener("change", function (ev) {
    var t = ev.target;
    if (t.id === "check-page") {
      boxes().forEach(function (b) { b.checked = t.checked; });
      if (!t.checked) setAllMatching(false);
      refresh();
    } else if (t.classList && t.classList.contains("row-check")) {
      if (!t.checked) setAllMatching(false);
      refresh();
    }
  });

  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (t.id === "select-all-matching" || t.id === "clear-selection") {
      var on = t.id === "select-all-matching";
      boxes().forEach(function (b) { b.checked = on; });
      setAllMatching(on);
      refresh();
    }
  });

  // A list that was replaced (search, filter, page) starts with nothing selected.
  document.addEventListener("htmx:afterSettle", refresh);
  document.addEventListener("DOMContentLoaded", refresh);

  window.cdsSelection = { count: count };
})();
