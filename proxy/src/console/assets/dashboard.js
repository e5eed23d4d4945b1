// The dashboard's charts: requests and blocks per minute (24 h) and per
// hour (7 days), drawn by the vendored uPlot from /console/dashboard/data,
// redrawn every 60 s. Times on the axis in the console's zone.
(function () {
  "use strict";
  var box = document.getElementById("charts");
  if (!box || typeof uPlot === "undefined") { return; }
  var plots = {};
  function width() { return Math.max(300, box.clientWidth - 20); }
  function draw(id, title, s, offsetMin) {
    // uPlot shows times in the browser's zone: shift them so the axis reads the console's zone.
    var shift = offsetMin * 60 + new Date().getTimezoneOffset() * 60;
    var x = s.x.map(function (t) { return t + shift; });
    var data = [x, s.requests, s.blocks];
    if (plots[id]) { plots[id].setData(data); return; }
    var opts = {
      title: title, width: width(), height: 220,
      series: [
        {},
        { label: box.dataset.requests, stroke: "#1f4e79", fill: "rgba(143,179,217,0.35)" },
        { label: box.dataset.blocks, stroke: "#c0392b", fill: "rgba(192,57,43,0.2)" }
      ],
      axes: [{}, { size: 60 }]
    };
    plots[id] = new uPlot(opts, data, document.getElementById(id));
  }
  function load() {
    fetch(box.dataset.src, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (d) {
        if (d.error) { throw new Error(d.error); }
        draw("chart-day", box.dataset.day, d.day, d.offset_min);
        draw("chart-week", box.dataset.week, d.week, d.offset_min);
        box.classList.remove("failed");
      })
      .catch(function (e) {
        box.classList.add("failed");
        box.setAttribute("title", box.dataset.error + " " + e.message);
      });
  }
  load();
  setInterval(load, 60000);
  window.addEventListener("resize", function () {
    Object.keys(plots).forEach(function (k) { plots[k].setSize({ width: width(), height: 220 }); });
  });
})();
