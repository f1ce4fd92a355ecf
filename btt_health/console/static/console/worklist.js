// Worklist: re-read the current page every few seconds (same filters, sort and page) and
// replace the rows when they changed, so new studies and finished AI jobs show up without a reload.
(function () {
  "use strict";
  var table = document.getElementById("worklist");
  if (!table) return;
  var api = table.dataset.api;
  var seconds = Math.max(1, parseFloat(table.dataset.poll || "5"));
  var signature = table.dataset.signature;
  var rows = document.getElementById("worklist-rows");
  var live = document.getElementById("live");
  var pageInfo = document.getElementById("page-info");

  function refresh() {
    if (document.hidden) return schedule();
    fetch(api + window.location.search, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (data && data.signature !== signature) {
          // Keep keyboard focus on the same study's link when rows are replaced.
          var focused = document.activeElement && document.activeElement.closest("tr[data-study]");
          var focusedStudy = focused ? focused.dataset.study : null;
          signature = data.signature;
          table.dataset.signature = signature;
          rows.innerHTML = data.rows_html;
          pageInfo.textContent = "Page " + data.page + " of " + data.pages + " · " + data.total + " studies";
          live.textContent = data.total + " studies · updated " + new Date().toLocaleTimeString();
          if (focusedStudy) {
            var row = rows.querySelector('tr[data-study="' + focusedStudy + '"] a');
            if (row) row.focus();
          }
        }
      })
      .catch(function () { /* offline for a moment: try again at the next tick */ })
      .then(schedule);
  }
  function schedule() { window.setTimeout(refresh, seconds * 1000); }
  schedule();
})();
