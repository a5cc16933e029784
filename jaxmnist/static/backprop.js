// Part A's lesson: sends the fields to POST /api/backprop and draws what comes back.
// Every number shown is the server's (float64 JAX), formatted there as --explain prints
// it; this script only lays the strings out and scales the curves to the picture.
"use strict";

const form = document.getElementById("inputs");
const statusLine = document.getElementById("status");
const runSelect = document.getElementById("run");
const slider = document.getElementById("step");
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2f6fed", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#868e96"];
const SEED = { i1: "0.05", i2: "0.10", t1: "0.01", t2: "0.99", w1: "0.15", w2: "0.20",
  w3: "0.25", w4: "0.30", w5: "0.40", w6: "0.45", w7: "0.50", w8: "0.55", b1: "0", b2: "0",
  steps: "500", lr: ["0.1", "0.2", "0.5", "0.8", "1", "2"] };
let latest = 0;      // the number of the newest request: older answers are dropped
let answer = null;   // the newest answer drawn
let timer = null;

function request() {
  const body = {};
  for (const input of form.querySelectorAll("input:not([name=lr])")) body[input.name] = input.value.trim();
  body.lrs = [...form.querySelectorAll("input[name=lr]")].map((i) => i.value.trim()).filter((v) => v !== "");
  if (runSelect.value !== "") body.lr_index = Number(runSelect.value);
  body.step = Number(slider.value);
  return body;
}

function showErrors(field, message) {
  for (const el of form.querySelectorAll(".err")) el.textContent = el.dataset.for === field ? message : "";
  for (const input of form.querySelectorAll("input")) {
    const name = input.name === "lr" ? "lrs" : input.name;
    input.classList.toggle("bad", name === field);
  }
}

async function compute(keepRun) {
  const number = ++latest;
  const body = request();
  if (!keepRun) { delete body.lr_index; }
  if (body.step > Number(body.steps)) body.step = 1;
  statusLine.className = "";
  statusLine.textContent = "computing…";
  let reply;
  try {
    const response = await fetch("/api/backprop", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    reply = await response.json();
  } catch (e) {
    if (number === latest) { statusLine.className = "error"; statusLine.textContent = `no answer from the server (${e})`; }
    return;
  }
  if (number !== latest) return;
  if (reply.error) {
    showErrors(reply.field, reply.error);
    statusLine.className = "error";
    statusLine.textContent = reply.error;
    return;
  }
  showErrors(null, "");
  answer = reply;
  statusLine.textContent = `computed in ${reply.ms} ms`;
  draw();
}

function later(keepRun) {  // typing: one request once the keys rest
  clearTimeout(timer);
  timer = setTimeout(() => compute(keepRun), 250);
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function draw() {
  const r = answer.request;
  runSelect.innerHTML = "";
  r.lrs.forEach((lr, i) => runSelect.append(new Option(`lr ${answer.final[i].lr}`, i, false, i === r.lr_index)));
  slider.max = r.steps;
  slider.value = r.step;
  document.getElementById("step-label").textContent = `step ${r.step} of ${r.steps}`;
  drawCurve();
  drawNetwork();
  drawWorked();
}

function drawCurve() {
  const svg = document.getElementById("curve");
  svg.innerHTML = "";
  const W = 540, H = 330, left = 62, right = 12, top = 24, bottom = 40;
  const its = answer.curves.iterations, runs = answer.curves.E_total;
  const log = document.getElementById("logscale").checked;
  const all = runs.flat().filter((e) => !log || e > 0);
  let lo = Math.min(...all), hi = Math.max(...all);
  if (log) { lo = Math.log10(lo); hi = Math.log10(hi); }
  if (hi - lo < 1e-12) { hi += 0.5; lo -= 0.5; }
  const last = its[its.length - 1];
  const x = (it) => left + (W - left - right) * it / last;
  const y = (e) => top + (H - top - bottom) * (hi - (log ? Math.log10(Math.max(e, 1e-300)) : e)) / (hi - lo);
  svg.append(el("text", { x: left, y: 15, "font-size": 13, "font-weight": 600 },
    `Total error vs iterations (${log ? "log" : "linear"} scale)`));
  for (let k = 0; k <= 4; k++) {
    const v = lo + (hi - lo) * k / 4, py = y(log ? 10 ** v : v);
    svg.append(el("line", { x1: left, x2: W - right, y1: py, y2: py, stroke: "#e3e6ea" }));
    svg.append(el("text", { x: left - 4, y: py + 4, "font-size": 10, "text-anchor": "end" },
      (log ? 10 ** v : v).toPrecision(2)));
  }
  for (let k = 0; k <= 4; k++) {
    const it = Math.round(last * k / 4);
    svg.append(el("text", { x: x(it), y: H - bottom + 15, "font-size": 10, "text-anchor": "middle" }, it));
  }
  svg.append(el("text", { x: (left + W) / 2, y: H - 6, "font-size": 11, "text-anchor": "middle" }, "iteration"));
  runs.forEach((run, i) => {
    const points = run.map((e, k) => `${x(its[k]).toFixed(1)},${y(e).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { points, fill: "none", stroke: COLOURS[i], "stroke-width": i === answer.request.lr_index ? 2.4 : 1.4, "data-lr": answer.final[i].lr }));
    svg.append(el("text", { x: W - right - 4, y: top + 14 + 14 * i, "font-size": 11, "text-anchor": "end", fill: COLOURS[i] },
      `lr = ${answer.final[i].lr}`));
  });
  const step = answer.request.step - 1;  // the worked step's values are before its update
  svg.append(el("line", { x1: x(step), x2: x(step), y1: top, y2: H - bottom, stroke: "#1d2430", "stroke-dasharray": "3 3" }));
  const body = document.querySelector("#final tbody");
  body.innerHTML = "";
  document.getElementById("final-last").textContent = `E_total at ${answer.request.steps}`;
  answer.final.forEach((f, i) => {
    const row = body.insertRow();
    row.style.color = COLOURS[i];
    for (const v of [f.lr, f.start, f.last]) { const c = row.insertCell(); c.textContent = v; c.className = "num"; }
  });
}

// Where each node sits (x, y) in the picture, and which two nodes each weight joins.
const NODES = { i1: [60, 90], i2: [60, 290], h1: [240, 90], h2: [240, 290], o1: [420, 90], o2: [420, 290] };
const EDGES = { w1: ["i1", "h1"], w2: ["i2", "h1"], w3: ["i1", "h2"], w4: ["i2", "h2"],
  w5: ["h1", "o1"], w6: ["h2", "o1"], w7: ["h1", "o2"], w8: ["h2", "o2"] };
const FILL = { i: "#dbe9f6", h: "#fde8c8", o: "#d9f0d3" };

function lines(svg, x, y, texts, attrs) {
  texts.forEach((t, k) => svg.append(el("text", { x, y: y + 12 * k, "font-size": 10.5, ...attrs }, t)));
}

function drawNetwork() {
  const svg = document.getElementById("network");
  svg.innerHTML = "";
  const n = answer.network;
  svg.append(el("text", { x: 10, y: 15, "font-size": 13, "font-weight": 600 },
    `lr ${answer.worked.lr}, step ${answer.request.step}: values before the update, ∂E_total/∂w on each edge`));
  for (const [w, [a, b]] of Object.entries(EDGES)) {
    const [x0, y0] = NODES[a], [x1, y1] = NODES[b];
    svg.append(el("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: "#8a929e", "stroke-width": 1.3 }));
    const f = y0 === y1 ? 0.5 : 0.3;  // crossing edges: labels near their start, apart
    const lx = x0 + f * (x1 - x0), ly = y0 + f * (y1 - y0) + (y0 === y1 ? -16 : 0);
    svg.append(el("rect", { x: lx - 44, y: ly - 10, width: 88, height: 25, rx: 4, fill: "#fff", stroke: "#d0d4da" }));
    lines(svg, lx, ly, n.edges[w], { "text-anchor": "middle", "data-edge": w });
  }
  for (const [name, [x, y]] of Object.entries(NODES)) {
    svg.append(el("circle", { cx: x, cy: y, r: 20, fill: FILL[name[0]], stroke: "#4a525e" }));
    svg.append(el("text", { x, y: y + 4, "font-size": 13, "font-weight": 700, "text-anchor": "middle" }, name));
    const texts = n.nodes[name];
    lines(svg, x, y < 200 ? y - 28 - 12 * (texts.length - 1) : y + 36, texts, { "text-anchor": "middle", "data-node": name });
  }
  for (const [k, y] of [["1", 90], ["2", 290]]) {
    svg.append(el("line", { x1: 440, y1: y, x2: 462, y2: y, stroke: "#8a929e" }));
    lines(svg, 466, y - 12, n.outputs[k], {});
  }
  svg.append(el("text", { x: 466, y: 194, "font-size": 12, "font-weight": 700, id: "e-total" }, n.total));
  if (n.biases) svg.append(el("text", { x: 280, y: 362, "font-size": 10.5, "text-anchor": "middle" }, n.biases));
}

function table(id, head, rows) {
  const t = document.getElementById(id);
  t.innerHTML = "";
  const h = t.createTHead().insertRow();
  for (const c of head) { const th = document.createElement("th"); th.textContent = c; h.append(th); }
  const body = t.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    for (const c of r) { const td = tr.insertCell(); td.textContent = c; td.className = "num"; }
  }
}

function drawWorked() {
  const w = answer.worked;
  document.getElementById("worked-title").textContent = w.title;
  document.getElementById("worked-before").textContent = `Before the step: ${w.example}; ${w.weights}`;
  table("forward", ["", "formula", "numbers", "value"],
    w.forward.map((r) => [r.name, r.formula, r.numbers, r.value]));
  table("local", ["", "formula", "numbers", "value"],
    w.local_derivatives.map((r) => [r.name, r.formula, r.numbers ?? "", r.value]));
  table("backward", ["", "chain", "numbers", "value", "jax.grad", "difference"],
    w.backward.map((r) => [`∂E_total/∂${r.weight}`, r.chain, r.numbers, r.value, r.jax_grad, r.difference]));
  document.getElementById("update-title").textContent = `Update (w ← w − lr·∂E_total/∂w, lr = ${w.lr})`;
  table("update", ["", "w − lr·∂E_total/∂w", "after"],
    w.update.map((r) => [r.weight, `${r.before} − ${w.lr}·${r.gradient}`, r.after]));
  document.getElementById("text").textContent = answer.text;
}

function fill(values) {
  for (const input of form.querySelectorAll("input:not([name=lr])")) input.value = values[input.name];
  form.querySelectorAll("input[name=lr]").forEach((input, i) => { input.value = values.lr[i] ?? ""; });
  runSelect.value = "";
  slider.value = 1;
  compute(false);
}

form.addEventListener("input", (e) => later(e.target.name !== "lr" && e.target.name !== "steps"));
runSelect.addEventListener("change", () => compute(true));
slider.addEventListener("input", () => {
  document.getElementById("step-label").textContent = `step ${slider.value} of ${slider.max}`;
  later(true);
});
document.getElementById("logscale").addEventListener("change", () => answer && drawCurve());
document.getElementById("seed").addEventListener("click", () => fill(SEED));
document.getElementById("classic").addEventListener("click", () => fill({ ...SEED, b1: "0.35", b2: "0.60" }));
compute(false);
