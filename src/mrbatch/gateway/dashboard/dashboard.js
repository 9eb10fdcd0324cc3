// mrbatch dashboard: polls /api/dashboard every second and redraws in place (no reload).
// Hand-written SVG charts; every value from the server is set with textContent, never parsed
// as HTML, because input keys and error messages come from users.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 1000;
  const WINDOW_S = 600; // history kept in the page (the gateway keeps as much)
  const CHARTS = {
    files: [["files_split", "split"], ["files_processed", "processed"], ["files_reconciled", "reconciled"]],
    executions: [["executions_started", "started"], ["executions_succeeded", "succeeded"],
                 ["executions_failed", "failed"]],
    chunks: [["chunk_executions_started", "started"], ["chunk_executions_succeeded", "succeeded"],
             ["chunk_executions_failed", "failed"]],
  };
  const STEP_STATE = { ok: "succeeded", warning: "warning", failed: "failed", running: "running" };

  let samples = [];
  let lastAt = null;
  let polls = 0;
  const panels = new Map();

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function badge(text, state) {
    const node = el("span", text, "badge");
    node.dataset.state = state || text;
    return node;
  }

  function num(value, digits) {
    if (value === null || value === undefined) return "-";
    return digits ? Number(value).toFixed(digits) : Math.round(value).toLocaleString("en");
  }

  function ago(at, now) {
    if (!at) return "-";
    const s = Math.max(0, now - at);
    if (s < 60) return `${s.toFixed(0)}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s ago`;
    return new Date(at * 1000).toLocaleString();
  }

  function clock(at) {
    return at ? new Date(at * 1000).toLocaleTimeString() : "-";
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * e >= v) return m * e;
    return 10 * e;
  }

  function svgNode(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  // series: [{label, points: [[t, v], ...]}]; draws them between times t0 and t1.
  function drawChart(svg, legend, series, t0, t1, digits) {
    // Drawn at the element's own size (redrawn every poll), so text is never stretched.
    const W = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 400);
    const H = 130, L = 40, R = 8, T = 8, B = 16;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    let max = 0;
    for (const s of series) for (const p of s.points) if (p[1] > max) max = p[1];
    const top = niceMax(max);
    const span = Math.max(1, t1 - t0);
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    const y = (v) => H - B - (v / top) * (H - T - B);
    const nodes = [
      svgNode("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
      svgNode("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
      svgNode("line", { x1: L, y1: y(top / 2), x2: W - R, y2: y(top / 2), class: "axis" }),
    ];
    for (const [v, yy] of [[top, T + 8], [top / 2, y(top / 2) + 3], [0, H - B]]) {
      const label = svgNode("text", { x: L - 4, y: yy, "text-anchor": "end", class: "tick" });
      label.textContent = digits || !Number.isInteger(v) ? v.toFixed(digits || 1) : num(v);
      nodes.push(label);
    }
    const left = svgNode("text", { x: L, y: H - 3, class: "tick" });
    left.textContent = `-${Math.round(span)}s`;
    const right = svgNode("text", { x: W - R, y: H - 3, "text-anchor": "end", class: "tick" });
    right.textContent = "now";
    nodes.push(left, right);
    series.forEach((s, i) => {
      let pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined && p[0] >= t0);
      if (pts.length === 1) pts = [[t0, pts[0][1]], pts[0]];
      if (!pts.length) return;
      const line = svgNode("polyline", {
        points: pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "),
        class: `s${i}`,
      });
      line.dataset.series = s.label;
      nodes.push(line);
    });
    svg.replaceChildren(...nodes);
    legend.replaceChildren(...series.map((s, i) => {
      const item = el("li", `${s.label} `, `s${i}`);
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      item.append(el("span", num(last, digits)));
      return item;
    }));
  }

  function panel(region) {
    let node = panels.get(region);
    if (node) return node;
    node = $("region-template").content.firstElementChild.cloneNode(true);
    node.dataset.region = region;
    node.id = `region-${region}`;
    node.querySelector(".region-name").textContent = region;
    $("regions").append(node);
    panels.set(region, node);
    return node;
  }

  function renderRegions(data, t0, t1) {
    const latest = data.latest;
    for (const region of data.regions) {
      const info = latest.regions[region] || {};
      const node = panel(region);
      node.dataset.active = String(latest.active_region === region);
      const state = node.querySelector(".region-state");
      state.textContent = info.state || "unknown";
      state.dataset.state = info.state || "unknown";
      const proc = node.querySelector(".region-process");
      const alive = info.alive ? "up" : "down";
      proc.textContent = `process ${alive}${info.process_state ? ` (${info.process_state})` : ""}`;
      proc.dataset.state = alive;
      const counters = info.counters || {};
      node.querySelector(".stat-in-flight").textContent = num(info.runs_in_flight);
      node.querySelector(".stat-backlog").textContent = num(info.backlog);
      node.querySelector(".stat-lag").textContent =
        info.lag_seconds === null || info.lag_seconds === undefined ? "-" : `${num(info.lag_seconds, 1)}s`;
      node.querySelector(".stat-rows").textContent = num(counters.rows_processed);
      node.querySelector(".stat-rejected").textContent = num(counters.rows_rejected);
      node.querySelector(".stat-heartbeat").textContent =
        info.heartbeat_age === null || info.heartbeat_age === undefined ? "never" : `${num(info.heartbeat_age, 1)}s ago`;
      const versions = [info.version, info.replicator_version].filter(Boolean);
      const shown = [...new Set(versions)].join(" / ") || "-";
      node.querySelector(".stat-version").textContent =
        info.config_digest ? `${shown} · config ${info.config_digest}` : shown;
      const error = node.querySelector(".region-error");
      error.hidden = !info.last_error;
      error.textContent = info.last_error ? `last error: ${info.last_error}` : "";
      for (const [chart, names] of Object.entries(CHARTS)) {
        const series = names.map(([key, label]) => ({
          label,
          points: samples.map((s) => [s.at, ((s.regions[region] || {}).counters || {})[key] ?? null]),
        }));
        drawChart(node.querySelector(`[data-chart="${chart}"]`),
                  node.querySelector(`[data-legend="${chart}"]`), series, t0, t1, 0);
      }
    }
  }

  function renderReplication(data, t0, t1) {
    const series = (field) => data.regions.map((region) => ({
      label: region,
      points: samples.map((s) => [s.at, (s.regions[region] || {})[field] ?? null]),
    }));
    drawChart($("lag-chart"), $("lag-legend"), series("lag_seconds"), t0, t1, 1);
    drawChart($("backlog-chart"), $("backlog-legend"), series("backlog"), t0, t1, 0);
  }

  function renderRuns(data) {
    const rows = data.runs.map((run) => {
      const tr = el("tr");
      tr.dataset.runId = run.run_id;
      tr.dataset.status = run.status;
      const status = el("td");
      status.append(badge(run.status));
      const last = el("td", run.status === "FAILED" ? run.reason : (run.output_key || run.mail_error || ""),
                      run.status === "FAILED" ? "reason" : "");
      const id = el("td");
      id.append(el("code", run.run_id.slice(0, 12)));
      tr.append(id, el("td", run.input_key, "input"), status, el("td", run.region), el("td", run.epoch),
                el("td", num(run.rows_in), "num"), el("td", num(run.rows_out), "num"),
                el("td", num(run.rows_rejected), "num"), last, el("td", ago(run.updated_at, data.now)));
      return tr;
    });
    $("runs").tBodies[0].replaceChildren(...rows);
    $("runs-empty").hidden = rows.length > 0;
    const counts = Object.entries(data.runs_by_status).map(([k, v]) => `${v} ${k.toLowerCase()}`);
    $("run-counts").textContent = counts.length ? counts.join(", ") : "none";
  }

  function renderPlans(data) {
    const rows = data.plans.map((plan) => {
      const tr = el("tr");
      tr.dataset.planId = plan.id;
      tr.dataset.plan = plan.plan;
      tr.dataset.outcome = plan.outcome;
      const outcome = el("td");
      outcome.append(badge(plan.outcome));
      if (plan.reason) outcome.append(el("div", plan.reason, "reason"));
      if (plan.at_risk) outcome.append(el("div", `${plan.at_risk} input(s) at risk`, "reason"));
      const rto = plan.rto_seconds === null ? "-" : `${num(plan.rto_seconds, 2)}s / ${num(plan.desired_rto)}s`;
      const steps = el("td");
      const list = el("div", null, "steps");
      for (const step of plan.steps) {
        const b = badge(step.name, STEP_STATE[step.outcome] || step.outcome);
        b.title = `${step.outcome}${step.seconds !== null ? ` in ${step.seconds}s` : ""}: ${step.message}`;
        list.append(b);
      }
      steps.append(list);
      tr.append(el("td", plan.plan, "plan"), el("td", `${plan.source || "?"} → ${plan.target}`), outcome,
                el("td", rto), el("td", `${plan.epoch_before ?? "?"} → ${plan.epoch_after ?? "?"}`),
                el("td", clock(plan.started)), steps);
      return tr;
    });
    $("plans").tBodies[0].replaceChildren(...rows);
    $("plans-empty").hidden = rows.length > 0;
  }

  // Every process's version of mrbatch: one, or each version with the processes running it.
  function renderVersions(byProcess) {
    const groups = new Map();
    for (const [label, version] of Object.entries(byProcess)) {
      if (!groups.has(version)) groups.set(version, []);
      groups.get(version).push(label);
    }
    const node = $("versions");
    node.dataset.mixed = String(groups.size > 1);
    node.textContent = groups.size === 0 ? "-" : groups.size === 1 ? [...groups.keys()][0]
      : [...groups].map(([v, labels]) => `${v} (${labels.join(", ")})`).join(" · ");
  }

  function render(data) {
    const latest = data.latest;
    const app = $("app-state");
    app.textContent = (latest.app_state || "unknown").replace(/-/g, " ");
    app.dataset.state = latest.app_state || "unknown";
    $("active-region").textContent = latest.active_region || "?";
    $("epoch").textContent = latest.epoch ?? "?";
    $("phase").textContent = latest.phase || "?";
    renderVersions(latest.versions || {});
    const t1 = data.now;
    const t0 = Math.max(samples.length ? samples[0].at : t1 - 60, t1 - WINDOW_S);
    renderRegions(data, t0, t1);
    renderReplication(data, t0, t1);
    renderRuns(data);
    renderPlans(data);
    const errors = $("errors");
    errors.hidden = !data.errors.length;
    errors.textContent = data.errors.join(" · ");
    $("last-update").textContent = clock(data.now);
  }

  function merge(incoming, now) {
    for (const s of incoming) {
      if (lastAt === null || s.at > lastAt) {
        samples.push(s);
        lastAt = s.at;
      }
    }
    samples = samples.filter((s) => s.at >= now - WINDOW_S);
  }

  async function poll() {
    const conn = $("connection");
    try {
      const query = lastAt === null ? "" : `?since=${encodeURIComponent(lastAt)}`;
      const response = await fetch(`/api/dashboard${query}`, {
        cache: "no-store", signal: AbortSignal.timeout(10000),
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      merge(data.samples, data.now);
      render(data);
      polls += 1;
      document.body.dataset.polls = String(polls);
      conn.dataset.ok = "true";
      conn.textContent = `live · ${samples.length} samples`;
    } catch (err) {
      conn.dataset.ok = "false";
      conn.textContent = `gateway unreachable (${err.message}); retrying`;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
