// The overview refreshes itself: the live sections as HTML the relay renders, the charts from
// /dashboard/api/charts drawn with uPlot. No inline script or style: the CSP allows none.
"use strict";
(function () {
  var live = document.getElementById("live");
  if (!live) {
    return;
  }
  var every = 1000 * Number(live.getAttribute("data-refresh") || 5);
  var stamp = document.getElementById("refreshed");
  var charts = {};
  var colours = ["#2663c7", "#d33a2c", "#1f9d55", "#d98c00", "#7a6fb0", "#0f8b8d", "#b5446e", "#5b6675"];

  function width(el) {
    return Math.max(300, el.clientWidth || 600);
  }

  // One chart: x is time (Unix seconds), one line per named series. Re-made when its lines
  // change (agents come and go), else given new data.
  function draw(id, names, xs, columns, unit, dots) {
    var el = document.getElementById(id);
    if (!el) {
      return;
    }
    var key = names.join("\u0000");
    var data = [xs].concat(columns);
    var held = charts[id];
    if (held && held.key === key) {
      held.plot.setData(data);
      return;
    }
    if (held) {
      held.plot.destroy();
    }
    el.textContent = "";
    var series = [{}].concat(names.map(function (name, i) {
      return { label: name, stroke: colours[i % colours.length], width: 2, spanGaps: false,
        points: dots ? { show: true, size: 5 } : { show: false },
        value: function (u, v) { return v == null ? "-" : v.toFixed(v < 10 ? 2 : 0) + " " + unit; } };
    }));
    var plot = new uPlot({ width: width(el), height: 200, series: series,
      scales: { x: { time: true } }, axes: [{}, { size: 60 }] }, data, el);
    charts[id] = { key: key, plot: plot };
  }

  function drawAll(body) {
    if (!body.enabled) {
      return;
    }
    var xs = body.starts;
    draw("chart-ingest", ["records/s"], xs, [body.ingest_per_second], "rec/s", false);
    draw("chart-latency", ["mean", "max"], xs, [body.query_mean_ms, body.query_max_ms], "ms", true);
    var agents = Object.keys(body.agents);
    draw("chart-lag", agents, xs, agents.map(function (a) { return body.agents[a].lag_seconds; }), "s", true);
    draw("chart-queue", agents, xs, agents.map(function (a) { return body.agents[a].queue; }), "", true);
  }

  // Keep the plans an operator opened open across refreshes.
  function openPlans() {
    return Array.prototype.map.call(live.querySelectorAll("details[open]"), function (d) { return d.id; });
  }

  function reopen(ids) {
    ids.forEach(function (id) {
      var el = id && document.getElementById(id);
      if (el) {
        el.open = true;
      }
    });
  }

  function signedOut(answer) {
    if (answer.status === 401) {
      window.location.assign("/dashboard/login");
      return true;
    }
    return false;
  }

  function refresh() {
    if (document.hidden) {
      return Promise.resolve();
    }
    var options = { credentials: "same-origin", headers: { accept: "application/json" } };
    return Promise.all([fetch("/dashboard/fragment/live", options), fetch("/dashboard/api/charts", options)])
      .then(function (answers) {
        if (signedOut(answers[0]) || signedOut(answers[1])) {
          return null;
        }
        return Promise.all([answers[0].text(), answers[1].json()]).then(function (bodies) {
          var opened = openPlans();
          live.innerHTML = bodies[0];
          reopen(opened);
          drawAll(bodies[1]);
          stamp.textContent = "updated " + new Date().toLocaleTimeString();
        });
      })
      .catch(function (error) {
        stamp.textContent = "refresh failed (" + error.message + "); retrying";
      });
  }

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var el = document.getElementById(id);
      charts[id].plot.setSize({ width: width(el), height: 200 });
    });
  });
  refresh();
  window.setInterval(refresh, every);
})();
