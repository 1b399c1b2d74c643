// kingdee-cdc operator console: draws the triage charts (Chart.js) from the JSON the page carries, and turns a click on
// a bar into a drill-down (htmx loads the events behind it). Everything else is server-rendered HTML and htmx attributes.
(function () {
  "use strict";
  var PALETTE = ["#d1495b", "#edae49", "#00798c", "#30638e", "#8f2d56", "#66a182", "#7d5ba6", "#e07a5f", "#3d405b",
                 "#81b29a", "#b56576", "#6d597a"];

  function color(i) { return PALETTE[i % PALETTE.length]; }

  function query(base, extra) {
    var p = new URLSearchParams();
    Object.keys(base).forEach(function (k) { if (base[k]) { p.set(k, base[k]); } });
    Object.keys(extra).forEach(function (k) { if (extra[k]) { p.set(k, extra[k]); } });
    return p.toString();
  }

  function drill(data, extra) {
    var url = data.eventsUrl + "?" + query(data.base, extra);
    htmx.ajax("GET", url, { target: "#events", swap: "innerHTML" });
    var events = document.getElementById("events");
    if (events) { events.scrollIntoView({ behavior: "smooth", block: "start" }); }
  }

  function draw(canvas, config) {
    var old = Chart.getChart(canvas);
    if (old) { old.destroy(); }
    return new Chart(canvas, config);
  }

  function charts(root) {
    var holder = (root.querySelector && root.querySelector("#triage-chart")) || document.getElementById("triage-chart");
    var timeCanvas = document.getElementById("chart-time");
    var sourceCanvas = document.getElementById("chart-source");
    if (!holder || !timeCanvas || !sourceCanvas || typeof Chart === "undefined") { return; }
    var data = JSON.parse(holder.textContent);
    var common = { responsive: true, maintainAspectRatio: false, animation: false,
                   plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } } };
    draw(timeCanvas, {
      type: "bar",
      data: { labels: data.labels, datasets: data.series.map(function (s, i) {
        return { label: s.label, data: s.data, backgroundColor: color(i), stack: "all" }; }) },
      options: Object.assign({}, common, {
        scales: { x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true } }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
        onClick: function (evt, elements) {
          if (!elements.length) { return; }
          var s = data.series[elements[0].datasetIndex];
          drill(data, { at: data.keys[elements[0].index], kind: s.kind, reason: s.reason });
        } })
    });
    draw(sourceCanvas, {
      type: "bar",
      data: { labels: data.sources, datasets: data.bySource.map(function (s, i) {
        return { label: s.label, data: s.data, backgroundColor: color(i), stack: "all" }; }) },
      options: Object.assign({}, common, { indexAxis: "y",
        scales: { x: { stacked: true, beginAtZero: true, ticks: { precision: 0 } }, y: { stacked: true } },
        onClick: function (evt, elements) {
          if (!elements.length) { return; }
          var s = data.series.filter(function (x) { return x.label === data.bySource[elements[0].datasetIndex].label; })[0];
          drill(data, { source: data.sources[elements[0].index], kind: s ? s.kind : "", reason: s ? s.reason : "" });
        } })
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    htmx.onLoad(charts);
  });
})();
