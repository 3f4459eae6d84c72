/* CDS console: small behaviours htmx does not cover. No inline script anywhere (CSP). */
(function () {
  "use strict";

  var fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit"
  });
  var full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });

  // UTC timestamps from the server, shown in the administrator's own time zone.
  function localTimes(root) {
    root.querySelectorAll("time.local:not([data-done])").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) {
        el.textContent = fmt.format(d);
        el.title = full.format(d);
      }
      el.setAttribute("data-done", "1");
    });
  }

  function toast(message, category) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var div = document.createElement("div");
    div.className = "toast toast-" + (category || "error");
    div.setAttribute("role", "alert");
    var span = document.createElement("span");
    span.textContent = message;
    var btn = document.createElement("button");
    btn.type = "button"; btn.className = "toast-close"; btn.textContent = "×";
    btn.setAttribute("aria-label", "Dismiss");
    div.appendChild(span); div.appendChild(btn);
    box.appendChild(div);
  }
  window.cdsToast = toast;

  document.addEventListener("click", function (ev) {
    var close = ev.target.closest(".toast-close");
    if (close) close.parentElement.remove();
    var copy = ev.target.closest("[data-copy]");
    if (copy) copyText(document.querySelector(copy.getAttribute("data-copy")));
  });

  // A Copy button beside a value shown once (a new API token, a generated password).
  function copyText(el) {
    if (!el) return;
    var text = el.textContent.trim();
    function selected() {
      // Without the clipboard API (plain http to a remote host): select it and copy.
      var range = document.createRange();
      range.selectNodeContents(el);
      var sel = window.getSelection();
      sel.removeAllRanges(); sel.addRange(range);
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      toast(ok ? "Copied." : "Selected: press Ctrl+C (or Cmd+C) to copy.", ok ? "success" : "info");
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { toast("Copied.", "success"); }, selected);
    } else {
      selected();
    }
  }

  // Info toasts fade away; errors stay until dismissed.
  function ageToasts() {
    document.querySelectorAll(".toast:not(.toast-error):not([data-timer])").forEach(function (el) {
      el.setAttribute("data-timer", "1");
      setTimeout(function () { el.remove(); }, 6000);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { localTimes(document); ageToasts(); });
  document.addEventListener("htmx:load", function (ev) { localTimes(ev.detail.elt); ageToasts(); });
  document.addEventListener("htmx:afterSettle", function () { localTimes(document); ageToasts(); });

  // One way to ask before a change: hx-confirm="question" on the button or the form. htmx
  // asks it for its own requests; a plain form (no htmx) is asked here, in the browser's
  // dialog too. A submit htmx took over is already prevented by then: not asked twice.
  document.addEventListener("submit", function (ev) {
    if (ev.defaultPrevented) return;
    var asker = ev.submitter && ev.submitter.closest("[hx-confirm]") || ev.target.closest("[hx-confirm]");
    if (asker && !window.confirm(asker.getAttribute("hx-confirm"))) ev.preventDefault();
  });

  // Never fail silently: a request that did not reach the server says so.
  document.addEventListener("htmx:sendError", function () {
    toast("The server could not be reached. Check the connection and try again.");
  });
  document.addEventListener("htmx:timeout", function () {
    toast("The server took too long to answer. Try again.");
  });
})();
