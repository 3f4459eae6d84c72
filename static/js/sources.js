/* Connections and Import Users: the connection form's LDAP fields, the upload size check. */
(function () {
  "use strict";

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
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
})();
