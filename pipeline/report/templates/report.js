(function () {
  "use strict";
  var table = document.getElementById("findings-table");
  if (table) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var filter = document.getElementById("findings-filter");
    var flaggedOnly = document.getElementById("findings-flagged");
    var shown = document.getElementById("findings-shown");
    var showQuiet = document.getElementById("show-quiet");
    var apply = function () {
      var query = filter.value.trim().toLowerCase();
      var visible = 0;
      rows.forEach(function (row) {
        var show = (!flaggedOnly.checked || row.classList.contains("is-flagged")) &&
          (!query || row.textContent.toLowerCase().indexOf(query) !== -1);
        row.hidden = !show;
        if (show && (showQuiet.checked || !row.classList.contains("quiet"))) { visible += 1; }
      });
      shown.textContent = visible + " of " + rows.length + " shown";
    };
    var key = function (row, index, numeric) {
      var cell = row.cells[index];
      if (numeric) {
        var value = parseFloat(cell.getAttribute("data-v"));
        return isNaN(value) ? -Infinity : value;
      }
      return cell.textContent.trim().toLowerCase();
    };
    Array.prototype.forEach.call(table.tHead.querySelectorAll("button[data-col]"), function (button) {
      button.addEventListener("click", function () {
        var index = parseInt(button.getAttribute("data-col"), 10);
        var numeric = button.getAttribute("data-type") === "num";
        var header = button.parentNode;
        // numbers (rank aside) sort highest first on the first click, text A to Z; a second click reverses
        var current = header.getAttribute("aria-sort");
        var ascending = current ? current !== "ascending" : (!numeric || index === 0);
        Array.prototype.forEach.call(table.tHead.querySelectorAll("th"), function (th) { th.removeAttribute("aria-sort"); });
        header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        rows.sort(function (a, b) {
          var x = key(a, index, numeric), y = key(b, index, numeric);
          var order = x < y ? -1 : (x > y ? 1 : 0);
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
    filter.addEventListener("input", apply);
    flaggedOnly.addEventListener("change", apply);
    showQuiet.addEventListener("change", apply);
    document.getElementById("findings-controls").hidden = false;
    apply();
  }
  document.body.setAttribute("data-ready", "1");
}());
