// The lead drawer: opens beside the board on a card click (or Enter on a focused card),
// loaded by htmx from /board/leads/{id}; bookmarkable as /?lead={id}. No inline script (CSP).
"use strict";

(function () {
  var drawer = null;
  var shownLead = null;
  var returnFocusTo = null;
  // A change learnt while the drawer was busy: the newest log position it reached (0 for
  // none, Infinity when its position is unknown), shown once the drawer is free again.
  var stale = 0;

  function ensureDrawer() {
    if (drawer) return drawer;
    drawer = document.createElement("aside");
    drawer.id = "lead-drawer";
    drawer.className = "drawer";
    drawer.setAttribute("role", "dialog");
    drawer.setAttribute("aria-modal", "false");
    drawer.setAttribute("aria-labelledby", "drawer-title");
    drawer.hidden = true;
    document.body.appendChild(drawer);
    if (window.htmx) window.htmx.process(drawer);
    return drawer;
  }

  function showAll() {
    var toggle = drawer && drawer.querySelector("[data-timeline-toggle]");
    return !!(toggle && toggle.checked);
  }

  function setUrl(leadId) {
    var url = new URL(window.location.href);
    if (leadId) url.searchParams.set("lead", leadId);
    else url.searchParams.delete("lead");
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
  }

  function load(leadId, focus) {
    ensureDrawer();
    stale = 0;
    var query = new URLSearchParams();
    if (shownLead === leadId) {
      // A refresh: keep the toggle, and the older entries opened.
      if (showAll()) query.set("all", "1");
      var shown = drawer.querySelectorAll("[data-timeline-entry]");
      var oldest = shown.length ? parseInt(shown[shown.length - 1].dataset.position || "", 10) : NaN;
      if (oldest > 0) query.set("down_to", String(oldest));
    }
    var url = "/board/leads/" + encodeURIComponent(leadId) + (query.toString() ? "?" + query.toString() : "");
    shownLead = leadId;
    drawer.dataset.leadId = leadId;
    drawer.hidden = false;
    document.body.classList.add("drawer-open");
    return window.htmx.ajax("GET", url, { target: drawer, swap: "innerHTML" }).then(function () {
      if (focus) {
        var title = drawer.querySelector("#drawer-title");
        if (title) title.focus();
      }
    });
  }

  function open(leadId, card) {
    returnFocusTo = card || null;
    setUrl(leadId);
    load(leadId, true);
  }

  function close() {
    if (!drawer || drawer.hidden) return;
    var leadId = shownLead;
    drawer.hidden = true;
    drawer.innerHTML = "";
    shownLead = null;
    delete drawer.dataset.leadId;
    document.body.classList.remove("drawer-open");
    setUrl(null);
    // The card may have been re-rendered meanwhile: find it again by its id.
    var card = leadId && document.querySelector('article.card[data-lead-id="' + CSS.escape(leadId) + '"]');
    var target = card || (returnFocusTo && document.contains(returnFocusTo) ? returnFocusTo : null);
    returnFocusTo = null;
    if (target) target.focus();
  }

  function cardFrom(event) {
    var card = event.target.closest && event.target.closest("article.card[data-lead-id]");
    if (!card || (drawer && drawer.contains(card))) return null;
    return card;
  }

  document.addEventListener("click", function (event) {
    var card = cardFrom(event);
    if (card) {
      // A drag (SortableJS) or a control inside the card is not a request to open it.
      if (event.defaultPrevented || card.classList.contains("sortable-chosen") ||
          card.classList.contains("sortable-drag") || document.body.classList.contains("dragging")) return;
      if (event.target.closest("a, button, input, select, textarea")) return;
      open(card.dataset.leadId, card);
      return;
    }
    if (!drawer || !drawer.contains(event.target)) return;
    var closer = event.target.closest("[data-drawer-close]");
    if (closer) { close(); return; }
    var link = event.target.closest("[data-lead-link]");
    if (link) { event.preventDefault(); open(link.dataset.leadLink, null); return; }
    var ask = event.target.closest("[data-confirm]");
    if (ask) {
      var panel = drawer.querySelector("#" + CSS.escape(ask.dataset.confirm));
      if (panel) {
        ask.hidden = true;
        panel.hidden = false;
        var yes = panel.querySelector("[data-confirmed]");
        if (yes) yes.focus();
      }
      return;
    }
    var cancel = event.target.closest("[data-confirm-cancel]");
    if (cancel) {
      var box = cancel.closest(".confirm");
      box.hidden = true;
      var opener = drawer.querySelector('[data-confirm="' + box.id + '"]');
      if (opener) { opener.hidden = false; opener.focus(); }
      catchUp();
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && event.target.matches && event.target.matches("article.card[data-lead-id]") &&
        !(drawer && drawer.contains(event.target))) {
      event.preventDefault();
      open(event.target.dataset.leadId, event.target);
      return;
    }
    if (event.key === "Escape" && drawer && !drawer.hidden) {
      event.preventDefault();
      close();
    }
  });

  // A confirmed one-shot command (convert, delete, restore): its controls go at once, so
  // a second click has nothing to press (the server is idempotent anyway).
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (!drawer || !drawer.contains(elt) || !elt.dataset || !elt.dataset.confirmed) return;
    var box = elt.closest(".confirmable");
    if (box) box.hidden = true;
  });

  // The drawer's refusals (422, 403, 404) carry the drawer re-rendered with the reason.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (drawer && (target === drawer || drawer.contains(target)) &&
        [403, 404, 409, 422].indexOf(event.detail.xhr.status) >= 0) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  function placeCard(template) {
    var leadId = template.dataset.cardFor;
    var old = document.querySelector('.board article.card[data-lead-id="' + CSS.escape(leadId) + '"]');
    var oldColumn = old && old.closest("section[data-stage-id]");
    var newColumn = template.dataset.stageId &&
      document.querySelector('.board section[data-stage-id="' + CSS.escape(template.dataset.stageId) + '"]');
    var fresh = template.content.firstElementChild;
    if (template.dataset.deleted === "true") {
      if (old) { old.remove(); bump(oldColumn, -1); }
    } else if (old && oldColumn === newColumn) {
      old.replaceWith(fresh);
    } else {
      if (old) { old.remove(); bump(oldColumn, -1); }
      if (newColumn && fresh) {
        newColumn.querySelector(".cards").prepend(fresh);
        var empty = newColumn.querySelector(".empty");
        if (empty) empty.remove();
        bump(newColumn, 1);
      }
    }
    template.remove();
  }

  function bump(column, by) {
    var count = column && column.querySelector("[data-count]");
    if (!count) return;
    var n = Math.max(0, (parseInt(count.dataset.count, 10) || 0) + by);
    count.dataset.count = String(n);
    count.textContent = String(n);
    count.setAttribute("aria-label", n + " leads");
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    if (!drawer || event.detail.target !== drawer) return;
    if (stale <= shownPosition()) stale = 0;
    drawer.querySelectorAll("template[data-card-for]").forEach(placeCard);
    // A command re-rendered the drawer: keep focus inside it.
    if (!drawer.contains(document.activeElement)) {
      var title = drawer.querySelector("#drawer-title");
      if (title) title.focus();
    }
  });

  function shownPosition() {
    var inner = drawer && drawer.querySelector("[data-drawer-lead]");
    return inner ? parseInt(inner.dataset.position || "0", 10) || 0 : 0;
  }

  // Someone is in the middle of something here (a note, a confirm, a request on its way).
  function busy() {
    var note = drawer.querySelector("textarea[name=value]");
    return !!((note && note.value.trim()) || drawer.querySelector(".confirm:not([hidden])") ||
      drawer.querySelector("[aria-busy], .htmx-request") || drawer.classList.contains("htmx-request"));
  }

  function catchUp() {
    if (!stale || !drawer || drawer.hidden || !shownLead || busy()) return;
    if (stale <= shownPosition()) { stale = 0; return; }
    load(shownLead, false);
  }

  // Changes learnt elsewhere (the board's live updates): refresh if it is this lead,
  // unless the drawer itself made the change; while it is busy, refresh once it is free.
  document.addEventListener("leadlog:lead-changed", function (event) {
    var detail = event.detail || {};
    if (!drawer || drawer.hidden || detail.leadId !== shownLead || detail.source === "drawer") return;
    var position = detail.position || Infinity;
    if (position <= shownPosition()) return;
    stale = Math.max(stale, position);
    catchUp();
  });

  // A request of the drawer's own (the timeline toggle, older entries, a command) may have
  // been on its way when a change arrived; once it is done, show what it missed.
  document.addEventListener("htmx:afterRequest", function (event) {
    if (!stale || !drawer || !(event.target === drawer || drawer.contains(event.target))) return;
    window.setTimeout(catchUp, 0);
  });
  document.addEventListener("input", function (event) {
    if (stale && drawer && drawer.contains(event.target)) window.setTimeout(catchUp, 0);
  });

  document.addEventListener("DOMContentLoaded", function () {
    var wanted = new URL(window.location.href).searchParams.get("lead");
    if (wanted && /^[0-9a-fA-F-]{36}$/.test(wanted) && document.querySelector(".board")) {
      var card = document.querySelector('article.card[data-lead-id="' + CSS.escape(wanted) + '"]');
      open(wanted, card);
    }
  });
})();
