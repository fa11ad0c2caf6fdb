// leadlog board: drag and drop (SortableJS), the keyboard move, and live updates (SSE).
"use strict";

(function () {
  var board, status, canMove, csrf;

  function say(text) {
    if (!status) return;
    // A new text node each time, so screen readers announce a repeated message too.
    status.textContent = "";
    window.setTimeout(function () { status.textContent = text; }, 30);
  }

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
    } catch (e) { return ""; }
  }

  function column(stageId) {
    return board.querySelector('section[data-stage-id="' + CSS.escape(stageId) + '"]');
  }

  function columnOf(card) { return card.closest("section[data-stage-id]"); }

  function cardById(leadId) {
    return board.querySelector('article.card[data-lead-id="' + CSS.escape(leadId) + '"]');
  }

  function nameOf(card) {
    var h = card.querySelector(".card-name");
    return h ? h.textContent.trim() : "the lead";
  }

  function stageName(stageId) {
    var section = column(stageId);
    var h = section && section.querySelector("h2");
    if (!h) return "another stage";
    var count = h.querySelector(".count");
    return h.textContent.replace(count ? count.textContent : "", "").trim();
  }

  // The filters the page shows, as a query string (they decide counts and which cards fit).
  function boardQuery() {
    var params = new URLSearchParams(window.location.search);
    params.set("pipeline", board.dataset.pipelineId);
    params.delete("lead"); params.delete("after");
    return params;
  }

  function setCounts(counts) {
    Object.keys(counts || {}).forEach(function (stageId) {
      var section = column(stageId);
      var el = section && section.querySelector("[data-count]");
      if (!el) return;
      el.dataset.count = String(counts[stageId]);
      el.textContent = String(counts[stageId]);
      el.setAttribute("aria-label", counts[stageId] + " leads");
    });
  }

  function bump(section, delta) {
    var el = section && section.querySelector("[data-count]");
    if (!el) return;
    var n = Math.max(0, parseInt(el.dataset.count || "0", 10) + delta);
    el.dataset.count = String(n);
    el.textContent = String(n);
    el.setAttribute("aria-label", n + " leads");
  }

  function tidy(section) {
    var cards = section.querySelector(".cards");
    var empty = cards.querySelector(".empty");
    var any = cards.querySelector("article.card");
    if (any && empty) empty.remove();
    if (!any && !empty) {
      var p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No leads";
      cards.appendChild(p);
    }
  }

  function time(card) {
    var t = Date.parse(card.dataset.created || "");
    return isNaN(t) ? 0 : t;
  }

  // Cards are newest first; one older than every loaded card of a column with "load more"
  // is left for that button to bring. Returns false when it was not placed.
  function place(card, section) {
    var cards = section.querySelector(".cards");
    var others = Array.prototype.filter.call(
      cards.querySelectorAll("article.card"), function (c) { return c !== card; });
    var at = time(card);
    for (var i = 0; i < others.length; i++) {
      if (time(others[i]) < at || (time(others[i]) === at && others[i].dataset.leadId < card.dataset.leadId)) {
        cards.insertBefore(card, others[i]);
        return true;
      }
    }
    var more = cards.querySelector(".more");
    if (more) { if (card.parentNode) card.remove(); return false; }
    var empty = cards.querySelector(".empty");
    cards.insertBefore(card, empty || null);
    return true;
  }

  function decorate(root) {
    if (!canMove) return;
    root.querySelectorAll("article.card[data-lead-id]").forEach(function (card) {
      if (card.querySelector("button.card-move")) return;
      var button = document.createElement("button");
      button.type = "button";
      button.className = "card-move";
      button.textContent = "Move";
      button.setAttribute("aria-haspopup", "dialog");
      button.setAttribute("aria-label", "Move " + nameOf(card) + " to another stage (or press M on the card)");
      card.appendChild(button);
    });
  }

  // ---- moving ------------------------------------------------------------------------------

  function reason(answer, body) {
    if (body && body.error && body.error.message) return body.error.message;
    if (answer.status === 403) return "you may not move cards";
    return "the server answered " + answer.status;
  }

  // The card is already in `target` on the page; save it, or put it back where it was.
  function save(card, from, next, target) {
    var leadId = card.dataset.leadId;
    var stageId = target.dataset.stageId;
    var name = nameOf(card);
    card.setAttribute("aria-busy", "true");
    tidy(target); tidy(from);
    var body = new URLSearchParams();
    body.set("stageId", stageId);
    return fetch("/board/moves/" + encodeURIComponent(leadId) + "?" + boardQuery().toString(), {
      method: "POST",
      headers: { "X-CSRF-Token": csrf, "Accept": "application/json" },
      body: body,
      credentials: "same-origin",
    }).then(function (answer) {
      return answer.json().catch(function () { return null; }).then(function (json) {
        if (!answer.ok) throw new Error(reason(answer, json));
        if (json && json.counts && Object.keys(json.counts).length) setCounts(json.counts);
        else { bump(from, -1); bump(target, 1); }
        card.removeAttribute("aria-busy");
        say("Moved " + name + " to " + stageName(stageId) + ".");
        document.dispatchEvent(new CustomEvent("leadlog:lead-changed",
          { detail: { leadId: leadId, position: json ? json.position : 0 } }));
      });
    }).catch(function (error) {
      var cards = from.querySelector(".cards");
      if (next && next.parentNode === cards) cards.insertBefore(card, next);
      else cards.insertBefore(card, cards.querySelector(".more, .empty"));
      card.removeAttribute("aria-busy");
      tidy(from); tidy(target);
      var why = error && error.message && error.message !== "Failed to fetch" ? error.message : "the server could not be reached";
      say("Could not move " + name + ": " + why + ". It is back in " + stageName(from.dataset.stageId) + ".");
      board.dataset.lastRefusal = why;
    });
  }

  function nextCard(card) {
    var n = card.nextElementSibling;
    while (n && !(n.matches("article.card") && n !== card && n.style.display !== "none")) n = n.nextElementSibling;
    return n || card.parentNode.querySelector(".more");
  }

  function moveTo(card, stageId) {
    var from = columnOf(card), target = column(stageId);
    if (!target || target === from) return;
    var next = nextCard(card);
    if (!place(card, target)) target.querySelector(".cards").insertBefore(card, target.querySelector(".more"));
    save(card, from, next, target);
  }

  // ---- drag and drop --------------------------------------------------------------------

  var origin = null, justDropped = false;

  function sortables() {
    if (!canMove || typeof Sortable === "undefined") return;
    board.querySelectorAll("section[data-stage-id] .cards").forEach(function (cards) {
      Sortable.create(cards, {
        group: "board",
        draggable: "article.card",
        filter: ".more, .empty, button.card-move",
        preventOnFilter: false,
        forceFallback: true,
        fallbackTolerance: 4,
        animation: 0,
        sort: false,
        onStart: function (evt) {
          document.body.classList.add("dragging");
          origin = { from: columnOf(evt.item), next: nextCard(evt.item) };
        },
        onEnd: function (evt) {
          var card = evt.item, was = origin;
          origin = null;
          justDropped = true;
          window.setTimeout(function () { justDropped = false; document.body.classList.remove("dragging"); }, 50);
          if (!was) return;
          var target = columnOf(card);
          if (target === was.from) {
            var cards = was.from.querySelector(".cards");
            if (was.next && was.next.parentNode === cards) cards.insertBefore(card, was.next);
            return;
          }
          if (!place(card, target)) target.querySelector(".cards").insertBefore(card, target.querySelector(".more"));
          save(card, was.from, was.next, target);
        },
      });
    });
  }

  // The click that ends a drag is not a request to open the card.
  window.addEventListener("click", function (event) {
    if (justDropped && event.target.closest && event.target.closest("article.card")) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // ---- the keyboard move ----------------------------------------------------------------

  var dialog, dialogCard = null;

  function openMove(card) {
    if (!dialog || !canMove) return;
    dialogCard = card;
    dialog.querySelector("[data-move-name]").textContent = nameOf(card);
    var select = dialog.querySelector("select");
    select.value = columnOf(card).dataset.stageId;
    dialog.returnValue = "";
    dialog.showModal();
    select.focus();
  }

  function setupDialog() {
    dialog = document.getElementById("move-dialog");
    if (!dialog) return;
    dialog.addEventListener("close", function () {
      var card = dialogCard;
      dialogCard = null;
      if (!card) return;
      var stageId = dialog.querySelector("select").value;
      if (dialog.returnValue === "move" && stageId !== columnOf(card).dataset.stageId) moveTo(card, stageId);
      else if (dialog.returnValue !== "move") say("Move cancelled.");
      card.focus();
    });
    // Escape closes the dialog only, not the drawer behind it.
    dialog.addEventListener("keydown", function (event) {
      if (event.key === "Escape") event.stopPropagation();
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button.card-move");
    if (!button || !board || !board.contains(button)) return;
    openMove(button.closest("article.card"));
  });

  document.addEventListener("keydown", function (event) {
    if (!board || event.altKey || event.ctrlKey || event.metaKey) return;
    var card = event.target.matches && event.target.matches("article.card[data-lead-id]") ? event.target : null;
    if (card && board.contains(card) && (event.key === "m" || event.key === "M")) {
      event.preventDefault();
      openMove(card);
    }
  });

  // ---- live updates ---------------------------------------------------------------------

  var pending = {}, after = 0, timer = null, busy = false;

  function refresh() {
    timer = null;
    var ids = Object.keys(pending);
    if (!ids.length || busy) return;
    pending = {};
    busy = true;
    var params = boardQuery();
    ids.forEach(function (id) { params.append("lead", id); });
    params.set("after", String(after));
    fetch("/board/live?" + params.toString(), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (answer) { if (!answer.ok) throw new Error(String(answer.status)); return answer.json(); })
      .then(function (json) {
        json.cards.forEach(apply);
        setCounts(json.counts);
      })
      .catch(function () { ids.forEach(function (id) { pending[id] = true; }); })
      .finally(function () { busy = false; if (Object.keys(pending).length) schedule(); });
  }

  function schedule() { if (!timer) timer = window.setTimeout(refresh, 80); }

  function apply(update) {
    var existing = cardById(update.leadId);
    if (existing && (existing.classList.contains("sortable-chosen") || existing.getAttribute("aria-busy"))) return;
    if (!update.html) {
      if (existing) { var from = columnOf(existing); existing.remove(); tidy(from); }
      return;
    }
    var holder = document.createElement("template");
    holder.innerHTML = update.html.trim();
    var fresh = holder.content.firstElementChild;
    var target = column(update.stageId);
    if (!fresh || !target) return;
    var focused = existing && existing.contains(document.activeElement);
    decorate(holder.content);
    if (existing && columnOf(existing) === target) {
      existing.replaceWith(fresh);
    } else {
      var old = existing ? columnOf(existing) : null;
      if (existing) existing.remove();
      place(fresh, target);
      if (old) tidy(old);
    }
    tidy(target);
    if (focused && fresh.isConnected) fresh.focus();
  }

  function listen() {
    if (typeof EventSource === "undefined") return;
    after = parseInt(board.dataset.position || "0", 10) || 0;
    var source = new EventSource("/board/events?after=" + after);
    source.addEventListener("open", function () { board.dataset.live = "open"; });
    source.addEventListener("error", function () { board.dataset.live = "reconnecting"; });
    source.addEventListener("lead", function (message) {
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      after = Math.max(after, data.position || 0);
      pending[data.leadId] = true;
      schedule();
      var name = data.type === "lead.received" ? "leadlog:lead-added" : "leadlog:lead-changed";
      document.dispatchEvent(new CustomEvent(name, { detail: { leadId: data.leadId, position: data.position } }));
      if (name === "leadlog:lead-added") {
        document.dispatchEvent(new CustomEvent("leadlog:lead-changed", { detail: { leadId: data.leadId, position: data.position } }));
      }
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    if (!board) return;
    decorate(board);
    // "Load more" may bring a card the live updates placed already: keep the first.
    var seen = {};
    board.querySelectorAll("article.card[data-lead-id]").forEach(function (card) {
      if (seen[card.dataset.leadId]) card.remove(); else seen[card.dataset.leadId] = true;
    });
    void event;
  });

  document.addEventListener("DOMContentLoaded", function () {
    board = document.querySelector(".board[data-pipeline-id]");
    if (!board) return;
    status = document.getElementById("board-status");
    canMove = board.dataset.canMove === "true";
    csrf = csrfToken();
    decorate(board);
    sortables();
    setupDialog();
    listen();
  });
})();
