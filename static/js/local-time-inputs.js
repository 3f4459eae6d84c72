/* Time filters: show UTC values from the URL in the administrator's time zone, and
   send the zone's offset along so the server can turn typed local times into UTC. */
(function () {
  "use strict";

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function init() {
    var offset = String(new Date().getTimezoneOffset());
    document.querySelectorAll("input[data-tz-offset]").forEach(function (el) { el.value = offset; });
    document.querySelectorAll("input[data-utc]:not([data-localised])").forEach(function (el) {
      if (el.value) {
        var d = new Date(el.value + ":00Z");
        if (!isNaN(d)) {
          el.value = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
            "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
        }
      }
      el.setAttribute("data-localised", "1");
    });
  }

  document.addEventListener("DOMContentLoaded", init);
})();
