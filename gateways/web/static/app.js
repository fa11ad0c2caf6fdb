// leadlog web app: small behaviours on top of server-rendered pages (no inline script: CSP).
"use strict";

function paintStages(root) {
  root.querySelectorAll("[data-color]").forEach(function (el) {
    if (/^#[0-9A-Fa-f]{6}$/.test(el.dataset.color)) el.style.setProperty("--stage", el.dataset.color);
  });
}

document.addEventListener("DOMContentLoaded", function () {
  paintStages(document);
  // A select marked data-autosubmit (the pipeline switcher) applies at once.
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () {
      select.form.requestSubmit();
    });
  });
});

document.addEventListener("htmx:afterSwap", function (event) {
  paintStages(event.target.parentElement || document);
});
