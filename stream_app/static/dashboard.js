// stream_app dashboard: polls /api/dashboard and draws small inline-SVG time series (no libraries).
"use strict";

const CHARTS = [
  {id: "events", title: "events / s", lines: [["events_per_s", "#2563eb"]]},
  {id: "recs", title: "recommendations / s", lines: [["recommendations_per_s", "#16a34a"]]},
  {id: "latency", title: "latency ms (p50, p99)", lines: [["latency_p50_ms", "#0891b2"], ["latency_p99_ms", "#dc2626"]]},
  {id: "dlq", title: "dead letters / s", lines: [["dead_letters_per_s", "#b45309"]]},
  {id: "encbatch", title: "encoder batch size", lines: [["encoder_batch", "#7c3aed"]]},
  {id: "encms", title: "encoder ms / batch", lines: [["encoder_ms", "#9333ea"]]},
  {id: "search", title: "search ms / call", lines: [["search_ms", "#0d9488"]]},
  {id: "lag", title: "consumer lag per partition", lag: true},
];
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#b45309", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const W = 300, H = 96, PAD = 4;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en");
  return Number(v).toFixed(digits === undefined ? (Math.abs(v) < 10 ? 2 : 1) : digits);
}

function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}

function setupCharts() {
  const box = document.getElementById("charts");
  for (const c of CHARTS) {
    const card = el("div", {class: "card", id: "chart-" + c.id});
    const head = el("div", {class: "card-head"});
    head.append(el("span", {}, c.title), el("b", {class: "last", id: "last-" + c.id}, "–"));
    card.append(head);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("id", "svg-" + c.id);
    card.append(svg, el("div", {class: "legend", id: "legend-" + c.id}));
    box.append(card);
  }
}

function drawChart(c, series) {
  const svg = document.getElementById("svg-" + c.id);
  let lines = c.lines;
  if (c.lag) {
    const keys = [...new Set(series.flatMap(p => Object.keys(p.lag || {})))].sort();
    lines = keys.map((k, i) => [k, PALETTE[i % PALETTE.length]]);
  }
  const value = (p, key) => c.lag ? (p.lag || {})[key] : p[key];
  const t0 = series.length ? series[0].t : 0, t1 = series.length ? series[series.length - 1].t : 1;
  let max = 0, any = false;
  for (const [key] of lines) for (const p of series) {
    const v = value(p, key);
    if (v !== null && v !== undefined) any = true;
    if (v > max) max = v;
  }
  const top = max;
  max = max > 0 ? max * 1.1 : 1;
  const x = t => PAD + (W - 2 * PAD) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = v => H - PAD - (H - 2 * PAD) * v / max;
  svg.replaceChildren();
  const grid = document.createElementNS(svg.namespaceURI, "path");
  grid.setAttribute("d", `M0 ${y(max / 1.1)} H${W} M0 ${y(max / 2.2)} H${W} M0 ${H - PAD} H${W}`);
  grid.setAttribute("class", "grid");
  svg.append(grid);
  const legend = document.getElementById("legend-" + c.id);
  legend.replaceChildren();
  let last = [];
  for (const [key, colour] of lines) {
    // Interval values (latency, encoder, search) exist only where work happened: the line joins the points
    // that have one; a lone point is drawn as a dot.
    const runs = [series.filter(p => value(p, key) !== null && value(p, key) !== undefined)
                        .map(p => [x(p.t), y(value(p, key))])];
    for (const run of runs) {
      if (run.length === 1) {
        const dot = document.createElementNS(svg.namespaceURI, "circle");
        dot.setAttribute("cx", run[0][0].toFixed(1)); dot.setAttribute("cy", run[0][1].toFixed(1));
        dot.setAttribute("r", "2.5"); dot.setAttribute("fill", colour);
        svg.append(dot);
      } else if (run.length) {
        const pl = document.createElementNS(svg.namespaceURI, "polyline");
        pl.setAttribute("points", run.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" "));
        pl.setAttribute("stroke", colour);
        pl.setAttribute("vector-effect", "non-scaling-stroke");
        svg.append(pl);
      }
    }
    const lastPoint = [...series].reverse().find(p => value(p, key) !== null && value(p, key) !== undefined);
    last.push(lastPoint ? value(lastPoint, key) : null);
    if (lines.length > 1) {
      const item = el("span", {}, (c.lag ? key : key.replace(/_ms$|_per_s$/, "").replace("latency_", "")) +
                                  " " + fmt(lastPoint ? value(lastPoint, key) : null));
      item.style.setProperty("--c", colour);
      legend.append(item);
    }
  }
  document.getElementById("last-" + c.id).textContent =
    lines.length === 1 ? fmt(last[0]) : (c.lag ? "max " + fmt(Math.max(0, ...last.filter(v => v !== null)), 0) : "");
  const scale = el("span", {class: "scale"}, any ? "max " + fmt(top) : "no data in this window");
  legend.append(scale);
}

function row(cells, header) {
  const tr = el("tr");
  for (const c of cells) {
    const td = el(header ? "th" : "td");
    if (c instanceof Node) td.append(c); else td.textContent = c;
    tr.append(td);
  }
  return tr;
}

function fill(id, header, rows, empty) {
  const t = document.getElementById(id);
  t.replaceChildren();
  if (!rows.length) { t.append(row([empty])); t.firstChild.firstChild.className = "muted"; return; }
  t.append(row(header, true));
  for (const r of rows) t.append(row(r));
}

function userLink(user) {
  const a = el("a", {href: "/users/" + encodeURIComponent(user)}, user);
  a.className = "mono";
  return a;
}

function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %"; }

function render(d) {
  const h = d.health;
  const badge = document.getElementById("health");
  badge.textContent = h.ok ? "serving" : "not serving";
  badge.className = "badge " + (h.ok ? "ok" : "bad");
  document.getElementById("problems").textContent = h.problems.join(" · ");
  document.getElementById("model").textContent = `${d.info.model} (${d.info.graph}, dim ${d.info.dim ?? "–"})`;
  document.getElementById("provider").textContent =
    `${(d.info.provider ?? "–").replace("ExecutionProvider", "")} · ${d.info.store}`;
  const c = d.counters;
  document.getElementById("catalogue").textContent = fmt(c.catalogue_size, 0);
  document.getElementById("users").textContent = fmt(c.users, 0);
  document.getElementById("events-total").textContent = fmt(c.events, 0);
  document.getElementById("recs-total").textContent = fmt(c.recommendations, 0);
  document.getElementById("dlq-total").textContent = fmt(c.dead_letters, 0);
  document.getElementById("uptime").textContent = duration(c.uptime_s);
  for (const chart of CHARTS) drawChart(chart, d.series);

  document.getElementById("online-k").textContent = `HR@${d.online.k}, last ${d.online.window} trials per type`;
  const online = Object.entries(d.online.by_type).filter(([, r]) => r.trials).map(([type, r]) => {
    const better = r.hr_served > r.hr_popular, b = el("b", {}, pct(r.hr_served));
    b.className = better ? "good" : (r.hr_served < r.hr_popular ? "warn" : "");
    return [type, String(r.trials), b, pct(r.hr_popular)];
  });
  fill("online", ["next event", "trials", "served lists", "most popular"], online, "no trials yet");

  const agents = Object.entries(h.agents).map(([name, a]) => {
    const s = el("span", {}, a.status);
    s.className = "badge " + (a.status === "ok" ? "ok" : "bad");
    return [name, s, String(a.crashes), a.last_batch_s_ago === null ? "–" : fmt(a.last_batch_s_ago, 1) + " s ago",
            a.last_error || ""];
  });
  fill("agents", ["agent", "status", "crashes", "last batch", "last error"], agents, "agents not started yet");

  fill("latest", ["user", "strategy", "top 5"], d.latest.map(r =>
    [userLink(r.user_id), r.strategy, r.items.map(i => i.title || i.item_id).join(" · ")]), "no recommendations yet");

  fill("dlq", ["when", "source", "key", "reason"], d.dead_letters.map(x =>
    [new Date(x.at * 1000).toLocaleTimeString(), `${x.topic}[${x.partition}]@${x.offset}`, x.key ?? "–", x.reason]),
    "none");
  document.getElementById("updated").textContent = "updated " + new Date(d.now * 1000).toLocaleTimeString();
}

async function poll() {
  try {
    const r = await fetch("/api/dashboard", {headers: {Accept: "application/json"}});
    const body = await r.json();
    if (!r.ok) {  // 401/403: user data needs the web token (or a loopback client)
      const badge = document.getElementById("health");
      badge.textContent = r.status === 401 || r.status === 403 ? "access denied" : "error " + r.status;
      badge.className = "badge bad";
      document.getElementById("problems").textContent = body.error || "";
      return;
    }
    render(body);
  } catch (err) {
    const badge = document.getElementById("health");
    badge.textContent = "unreachable";
    badge.className = "badge bad";
  }
}

setupCharts();
poll();
setInterval(poll, 2000);
