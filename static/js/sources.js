/* Connections and Import Users: confirmations, record selection, upload size check. */
(function () {
  "use strict";

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  // Buttons that ask first (Delete a connection…).
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button[data-confirm]");
    if (btn && !window.confirm(btn.getAttribute("data-confirm"))) ev.preventDefault();
  });

  // --- Import Users: selecting records -------------------------------------------
  function boxes() {
    return Array.prototype.slice.call(document.querySelectorAll("#records-table input[name=ids]:not(:disabled)"));
  }

  function allMatching() {
    var el = document.getElementById("all-matching");
    return el && el.checked;
  }

  function selectedCount() {
    if (allMatching()) {
      var holder = document.querySelector("#records-table [data-total]");
      return holder ? parseInt(holder.getAttribute("data-total"), 10) : 0;
    }
    return boxes().filter(function (b) { return b.checked; }).length;
  }

  function refresh() {
    var form = document.getElementById("import-form");
    if (!form) return;
    var n = selectedCount();
    var label = document.getElementById("import-count");
    if (label) label.textContent = n ? plural(n, "record") + " selected" + (allMatching() ? " (all matching)" : "") : "None selected";
    form.querySelectorAll("button[data-import]").forEach(function (b) {
      b.disabled = n === 0;
    });
    var page = document.getElementById("select-page");
    if (page) {
      var all = boxes();
      page.checked = all.length > 0 && all.every(function (b) { return b.checked; });
    }
    document.querySelectorAll("#records-table tbody tr").forEach(function (tr) {
      var box = tr.querySelector("input[name=ids]");
      tr.classList.toggle("selected", !!(box && (box.checked || (allMatching() && !box.disabled))));
    });
  }

  document.addEventListener("change", function (ev) {
    var t = ev.target;
    if (t.id === "select-page") {
      boxes().forEach(function (b) { b.checked = t.checked; });
      if (!t.checked && document.getElementById("all-matching")) document.getElementById("all-matching").checked = false;
    } else if (t.id === "all-matching" && t.checked) {
      boxes().forEach(function (b) { b.checked = true; });
    } else if (t.name === "ids" && !t.checked && document.getElementById("all-matching")) {
      document.getElementById("all-matching").checked = false;
    }
    refresh();
  });

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.id === "import-form") {
      var btn = ev.submitter;
      var n = selectedCount();
      var what = btn && btn.value === "1" ? "Import " + plural(n, "user") + " and send each a deployment e-mail?"
                                          : "Import " + plural(n, "user") + "?";
      if (!window.confirm(what)) ev.preventDefault();
    }
    // CSV upload: refuse an oversized file before sending it.
    if (form.classList.contains("src-upload-form")) {
      var input = form.querySelector("input[type=file]");
      var limit = parseInt(form.getAttribute("data-limit-mb"), 10) * 1024 * 1024;
      if (input && input.files && input.files[0] && limit && input.files[0].size > limit) {
        ev.preventDefault();
        var mb = (input.files[0].size / 1048576).toFixed(1);
        if (window.cdsToast) window.cdsToast("The file (" + mb + " MB) is larger than the upload limit of " +
          form.getAttribute("data-limit-mb") + " MB. Split it into smaller files.", "error");
      }
    }
  });

  // Connection form: the LDAP settings only show for that kind.
  function showKindFields() {
    var kind = document.querySelector("select[name=kind]");
    if (!kind) return;
    document.querySelectorAll("[data-ldap-only]").forEach(function (el) {
      el.hidden = kind.value !== "ldap";
    });
  }
  document.addEventListener("change", function (ev) {
    if (ev.target.name === "kind") showKindFields();
  });

  document.addEventListener("DOMContentLoaded", showKindFields);
  document.addEventListener("DOMContentLoaded", refresh);
  document.addEventListener("htmx:afterSettle", refresh);
})();
