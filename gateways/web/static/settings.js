// leadlog settings pages: copy a URL, add form rows, show the fields an action type needs.
"use strict";

function copyFrom(box) {
  var input = box.querySelector("[data-copy-source]");
  var status = box.querySelector("[data-copy-status]");
  function fallback() {
    // No clipboard API (an insecure origin, a refusal): select it for Ctrl+C.
    input.focus();
    input.select();
    status.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(input.value).then(function () {
      status.textContent = "Copied.";
    }, fallback);
  } else {
    fallback();
  }
}

function addRow(button) {
  var body = button.parentElement.querySelector("[data-rows] tbody");
  var last = body && body.lastElementChild;
  if (!last) return;
  var row = last.cloneNode(true);
  row.querySelectorAll("input").forEach(function (input) { input.value = ""; });
  row.querySelectorAll(".field-error").forEach(function (p) { p.remove(); });
  body.appendChild(row);
  var first = row.querySelector("input");
  if (first) first.focus();
}

function showActionFields(fieldset) {
  var select = fieldset.querySelector("[data-action-type-select]");
  var type = select ? select.value : "";
  fieldset.querySelectorAll("[data-for]").forEach(function (el) {
    el.hidden = type === "" || el.dataset.for.split(" ").indexOf(type) < 0;
  });
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-copy]").forEach(function (box) {
    box.querySelector("[data-copy-button]").addEventListener("click", function () { copyFrom(box); });
    box.querySelector("[data-copy-source]").addEventListener("focus", function (e) { e.target.select(); });
  });
  document.querySelectorAll("[data-add-row]").forEach(function (button) {
    button.addEventListener("click", function () { addRow(button); });
  });
  document.querySelectorAll("fieldset[data-action]").forEach(function (fieldset) {
    showActionFields(fieldset);
    var select = fieldset.querySelector("[data-action-type-select]");
    if (select) select.addEventListener("change", function () { showActionFields(fieldset); });
  });
});
