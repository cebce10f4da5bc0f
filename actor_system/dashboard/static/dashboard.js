// Enhancements only: every page works without this script.
"use strict";

// The overview's counts refresh every two seconds without reloading the page.
function refresh(section) {
  fetch(section.dataset.refresh, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : null))
    .then((data) => {
      if (!data) return;
      const s = data.summary;
      const charts = document.getElementById("charts");
      // Our own server-rendered SVG, every value in it escaped by the template.
      if (charts && data.charts_html) charts.innerHTML = data.charts_html;
      for (const el of document.querySelectorAll("[data-key]")) {
        const key = el.dataset.key;
        if (key === "next_due") {
          el.textContent = s.next_due_ms ? new Date(s.next_due_ms).toISOString().slice(0, 19) + "+00:00" : "-";
        } else if (key in s) {
          el.textContent = String(s[key]);
          if (key === "dead_letters") el.closest(".card")?.classList.toggle("bad", s[key] > 0);
        }
      }
    })
    .catch(() => {});
}

// Forms that change something ask first.
function confirmForms() {
  for (const form of document.querySelectorAll("form.confirm")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm || "Sure?")) event.preventDefault();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.querySelector("[data-refresh]");
  if (section) setInterval(() => refresh(section), 2000);
  confirmForms();
});
