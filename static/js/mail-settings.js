/* Settings → E-mail pages: ask before buttons marked data-confirm submit. */
(function () {
  "use strict";
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button[data-confirm]");
    if (btn && !window.confirm(btn.getAttribute("data-confirm"))) ev.preventDefault();
  });
})();
