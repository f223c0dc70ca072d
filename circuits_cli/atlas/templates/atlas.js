/* circuits atlas: the search box. Plain JavaScript, no requests: works from file://. */
(function () {
  "use strict";
  var data = window.ATLAS_UNITS || { layers: {}, aliases: {} };

  function resolve(query, root, here) {
    var q = query.trim();
    if (!q) return { error: "" };
    var layer = here || "", ch = q, i = q.lastIndexOf(":");
    if (i >= 0) { layer = q.slice(0, i).trim(); ch = q.slice(i + 1).trim(); }
    layer = data.aliases[layer] || layer;
    if (!/^\d+$/.test(ch)) return { error: "write LAYER:CHANNEL" + (here ? " or a channel number" : "") };
    if (!layer) return { error: "write LAYER:CHANNEL, e.g. " + firstUnit() };
    var entry = data.layers[layer];
    if (!entry) return { error: "no layer " + layer + " in this atlas" };
    var c = parseInt(ch, 10);
    if (entry.channels.indexOf(c) < 0) return { error: layer + ":" + c + " has no page in this atlas" };
    return { href: root + "/units/" + entry.slug + "/" + c + ".html" };
  }

  function firstUnit() {
    for (var name in data.layers) { return name + ":" + data.layers[name].channels[0]; }
    return "LAYER:CHANNEL";
  }

  function filterGrid(q) {
    var cells = document.querySelectorAll(".grid .cell");
    var t = q.trim(), i = t.lastIndexOf(":");
    if (i >= 0) t = t.slice(i + 1).trim();
    for (var k = 0; k < cells.length; k++) {
      var c = cells[k].getAttribute("data-channel");
      var show = !t || c.indexOf(t) === 0;
      cells[k].classList.toggle("hidden", !show);
      cells[k].classList.toggle("hit", !!t && c === t);
    }
  }

  var forms = document.querySelectorAll("form.search");
  for (var f = 0; f < forms.length; f++) {
    (function (form) {
      var input = form.querySelector("input"), msg = form.querySelector(".search-msg");
      var root = form.getAttribute("data-root") || ".", here = form.getAttribute("data-layer") || "";
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var r = resolve(input.value, root, here);
        if (r.href) { window.location.href = r.href; } else { msg.textContent = r.error; }
      });
      input.addEventListener("input", function () {
        msg.textContent = "";
        if (here) filterGrid(input.value);
      });
    })(forms[f]);
  }
})();
