/* Users tab: the bulk actions' questions with the count (the selection itself is
   selection.js), "Deploy at", Export (CSV), and refreshing what a finished job changed. */
(function () {
  "use strict";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  function selectedCount() { return window.cdsSelection.count(); }
  var unambiguous = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit"
  });
  function deployAtText() {
    var runAt = $("#run-at");
    return runAt && runAt.value ? unambiguous.format(new Date(runAt.value)) : "";
  }
  function plural(n) { return n.toLocaleString() + (n === 1 ? " user" : " users"); }

  document.addEventListener("change", function (ev) {
    var t = ev.target;
    if (t.id === "deploy-at") {
      var runAt = $("#run-at");
      var d = t.value ? new Date(t.value) : null;  // the admin's local time
      runAt.value = d && !isNaN(d) ? d.toISOString() : "";
      // The picker shows the browser's own date order (12/01 or 01/12?): say it unambiguously.
      var readout = $("#deploy-at-readout");
      if (readout) readout.textContent = runAt.value ? deployAtText() + " (your time)" : "";
      $all("[data-schedulable]").forEach(function (b) {
        var label = b.getAttribute("data-label");
        b.textContent = runAt.value ? label + " at " + deployAtText() : label;
      });
    }
  });

  document.addEventListener("click", function (ev) {
    var t = ev.target;
    var exportButton = t.closest("[data-bulk=export]");
    if (exportButton) {
      exportCsv(exportButton);
      return;
    }
    // A click anywhere on a row (but its checkbox or links) opens the user.
    var row = t.closest("tr[data-href]");
    if (row && !t.closest("a, button, input, label, select") && !window.getSelection().toString()) {
      window.location.href = row.getAttribute("data-href");
    }
  });

  function exportCsv(button) {
    var form = $("#bulk");
    var n = selectedCount();
    if (!window.confirm("Export " + plural(n) + " to CSV? The four passwords and PINs are never exported.")) return;
    var params = selectionParams();
    window.location.href = form.getAttribute("data-export-url") + "?" + params.toString();
  }

  // The user page: an ID change asks first, saying what it will do.
  document.addEventListener("htmx:confirm", function (ev) {
    var form = ev.detail.elt;
    if (!form || form.id !== "user-form" || !form.hasAttribute("data-id-change")) return;
    var input = form.querySelector("input[name=login_id]");
    var confirmed = form.querySelector("input[type=hidden][name=confirm_id_change]");
    var submitter = ev.detail.triggeringEvent && ev.detail.triggeringEvent.submitter;
    if (!input || (submitter && submitter.name === "confirm_id_change")) return;
    var newId = input.value.trim(), oldId = form.getAttribute("data-login-id");
    if (!newId || newId === oldId) return;
    ev.preventDefault();
    if (!window.confirm("Change the ID from " + oldId + " to " + newId + "?\n\n" +
                        form.getAttribute("data-id-change"))) return;
    if (!confirmed) {
      confirmed = document.createElement("input");
      confirmed.type = "hidden"; confirmed.name = "confirm_id_change";
      form.appendChild(confirmed);
    }
    confirmed.value = newId;
    ev.detail.issueRequest(true);
  });

  // Every bulk button asks first, with the count; Delete of many wants "all" typed.
  document.addEventListener("htmx:confirm", function (ev) {
    var elt = ev.detail.elt;
    var kind = elt.getAttribute && elt.getAttribute("data-bulk");
    if (!kind) return;
    ev.preventDefault();
    var n = selectedCount();
    var label = elt.getAttribute("data-label");
    var question;
    if (kind === "assign_profile") {
      var sel = $("#bulk select[name=profile_id]");
      question = "Assign the profile \u201c" + sel.options[sel.selectedIndex].text + "\u201d to " + plural(n) + "?";
    } else if (kind === "delete") {
      question = "Delete " + plural(n) + "? Their links and app credentials stop working. This cannot be undone.";
      var note = $("#bulk").getAttribute("data-delete-note");
      if (note) question += "\n\n" + note;
    } else {
      var runAt = $("#run-at");
      var when = elt.hasAttribute("data-schedulable") && runAt && runAt.value
        ? " at " + deployAtText() + " (your time)" : "";
      question = label + " for " + plural(n) + when + "?";
    }
    if (kind === "auto_deploy") {
      // Force config / new e-mail / skipped and why, counted by the server with the job's rules.
      previewThenConfirm(elt, question, ev.detail.issueRequest);
      return;
    }
    if (kind === "deploy") {
      // Before anything is sent: how many of the selection Deploy would skip, and why
      // (the server classifies the selection; its reasons are the job report's).
      deployPlan().then(function (plan) {
        ask(plan ? deployQuestion(plan, label, when) : question);
      });
      return;
    }
    ask(question);

    function ask(question) {
      if (!window.confirm(question)) return;
      var confirmInput = $("#bulk-confirm");
      if (confirmInput) confirmInput.value = "";
      if (kind === "delete" && n > 100) {
        var typed = window.prompt("To delete " + plural(n) + ", type the word all:");
        if (typed === null) return;
        confirmInput.value = typed;
      }
      ev.detail.issueRequest(true);
    }
  });

  function previewThenConfirm(button, question, issueRequest) {
    var form = $("#bulk");
    var body = new FormData(form);
    var headers = JSON.parse(document.body.getAttribute("hx-headers") || "{}");
    button.disabled = true;
    fetch(button.getAttribute("data-preview"), { method: "POST", body: body, headers: headers,
                                                 credentials: "same-origin" })
      .then(function (resp) {
        var plain = (resp.headers.get("Content-Type") || "").indexOf("text/plain") === 0;
        return resp.text().then(function (text) {
          return { ok: resp.ok, text: plain ? text : "The selection could not be checked (HTTP " + resp.status + ")." };
        });
      })
      .then(function (answer) {
        button.disabled = false;
        if (!answer.ok) { window.cdsToast(answer.text || "The selection could not be checked."); return; }
        if (window.confirm(question + "\n\n" + answer.text.trim())) {
          var confirmInput = $("#bulk-confirm");
          if (confirmInput) confirmInput.value = "";
          issueRequest(true);
        }
      })
      .catch(function () {
        button.disabled = false;
        window.cdsToast("The server could not be reached. Check the connection and try again.");
      });
  }

  function selectionParams() {
    var params = new URLSearchParams();
    new FormData($("#bulk")).forEach(function (value, key) {
      if (["csrf_token", "run_at", "confirm", "profile_id"].indexOf(key) === -1) params.append(key, value);
    });
    return params;
  }

  function deployPlan() {
    var url = $("#bulk").getAttribute("data-plan-url");
    if (!url || !window.fetch) return Promise.resolve(null);
    return fetch(url + "?" + selectionParams().toString(), {
      credentials: "same-origin", headers: { "Accept": "application/json" }
    }).then(function (r) { return r.ok ? r.json() : null; }).catch(function () { return null; });
  }

  function deployQuestion(plan, label, when) {
    var lines = [label + " for " + plural(plan.total) + when + "?"];
    if (plan.not_sent.length) {
      var skipped = plan.not_sent.reduce(function (sum, r) { return sum + r.count; }, 0);
      lines.push("");
      lines.push(plural(plan.to_send) + " will be sent an e-mail; " + plural(skipped) + " will not:");
      plan.not_sent.forEach(function (r) { lines.push("\u2022 " + plural(r.count) + ": " + r.reason); });
    }
    return lines.join("\n");
  }

  // Empty filter fields are left out of the request (and so of the address bar).
  document.addEventListener("htmx:configRequest", function (ev) {
    if (ev.detail.elt.id !== "user-filters") return;
    var params = ev.detail.parameters;
    var empty = [];
    (params.forEach ? params : new URLSearchParams(params)).forEach(function (value, key) {
      if (value === "") empty.push(key);
    });
    empty.forEach(function (key) { params.delete ? params.delete(key) : delete params[key]; });
  });

  // When a job shown on this page finishes, refresh what it changed.
  function refreshAfterJob(el) {
    var state = el.getAttribute("data-state");
    if (["done", "failed", "cancelled"].indexOf(state) === -1 || el.hasAttribute("data-refreshed")) return;
    el.setAttribute("data-refreshed", "1");
    var table = $("#users-table");
    if (table) {
      htmx.ajax("GET", window.location.pathname + window.location.search,
                { target: "#users-table", swap: "innerHTML" });
    }
    var user = $("#user-main");
    if (user) {
      htmx.ajax("GET", window.location.pathname, { target: "#user-main", swap: "outerHTML" });
    }
    // Keep the last few summaries above the table.
    $all("#job-area .job-progress").slice(3).forEach(function (old) { old.remove(); });
  }
  document.addEventListener("htmx:load", function (ev) {
    var elt = ev.detail.elt;
    if (!elt.closest || !elt.closest("#job-area")) return;
    $all(".job-progress", elt.parentNode).concat(elt.matches(".job-progress") ? [elt] : [])
      .forEach(refreshAfterJob);
  });
})();
