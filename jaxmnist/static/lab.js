// The architecture lab (/architecture): every number comes from the server's JSON API
// (jaxmnist/lab.py); this file only lays it out and draws.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (n) => n.toLocaleString("en");
async function api(method, path, body, raw = false) {
  const init = { method };
  if (body !== undefined) init.body = raw ? body : JSON.stringify(body);
  const response = await fetch(path, init);
  return [response.status, await response.json()];
}

// --- 1. type a net, see it ---------------------------------------------------------------
// MNIST test image 0 (a 7), 28x28 bytes: the digit the receptive fields are drawn over.
const SAMPLE = Uint8Array.from(atob(
  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" +
  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" +
  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" +
  "AAAAAFS5n5c8JAAAAAAAAAAAAAAAAAAAAAAAAAAAAADe/v7+/vHGxsbGxsbGxqo0AAAAAAAAAAAAAAAAQ3JIcqPj" +
  "/uH+/v765f7+jAAAAAAAAAAAAAAAAAAAAAAAEUIOQ0NDOxXs/moAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABT/dES" +
  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAW6f9TAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgf7uLAAAAAAAAAAAAAAA" +
  "AAAAAAAAAAAAAAAAO/n+PgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIX+uwUAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" +
  "AAnN+DoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB+/rYAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABL+/A5AAAAAAAA" +
  "AAAAAAAAAAAAAAAAAAAAAAAT3f6mAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAADy/7bIwAAAAAAAAAAAAAAAAAAAAAA" +
  "AAAAAAAAJv7+TQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAH+D+cwEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIX+/jQA" +
  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAD3y/v40AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB5/v7bKAAAAAAAAAAAAAAA" +
  "AAAAAAAAAAAAAAAAef7PEgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="),
  (c) => c.charCodeAt(0));

function drawField(row) {
  const ctx = $("field").getContext("2d");
  const image = ctx.createImageData(28, 28);
  SAMPLE.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  small.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, 224, 224);
  if (!row) return;
  const [top, left, side] = row.centre;
  ctx.strokeStyle = "#ff9f1c";
  ctx.lineWidth = 3;
  ctx.strokeRect(8 * left + 1.5, 8 * top + 1.5, 8 * side - 3, 8 * side - 3);
  $("field-caption").textContent = row.name === "head"
    ? `head: the ${row.token === "gap" ? "average pool" : "dense layer"} sees rows ` +
      `${row.sees[0]}-${row.sees[1]}` : `${row.name} ${row.token}: its centre unit sees ` +
      `${row.field}×${row.field} input pixels (${side}×${side} inside the image)`;
  $("field").dataset.field = String(row.field);
}

function options() {
  // "norm=none head=dense lr=0.04" -> {norm: "none", head: "dense", lr: 0.04}
  const out = {};
  for (const token of $("options").value.split(/\s+/).filter(Boolean)) {
    const [key, value, extra] = token.split("=");
    if (value === undefined || extra !== undefined || !key) {
      throw new Error(`options: expected key=value, got ${JSON.stringify(token)}`);
    }
    out[key] = value === "true" ? true : value === "false" ? false
      : value !== "" && !isNaN(Number(value)) ? Number(value) : value;
  }
  return out;
}

function request() {
  return { arch: $("arch").value, recipe: $("recipe").value, options: options() };
}

let described = 0;  // the newest request's number: older answers are dropped
let current = null;
async function describe() {
  const mine = ++described;
  let status, answer;
  try {
    [status, answer] = await api("POST", "/api/architecture", request());
  } catch (error) {
    [status, answer] = [400, { error: error.message, field: "options" }];
  }
  if (mine !== described) return;
  const bad = status !== 200;
  $("arch").classList.toggle("bad", bad && answer.field === "arch");
  $("options").classList.toggle("bad", bad && String(answer.field).startsWith("options"));
  $("arch-error").textContent = bad ? answer.error : (answer.over_limit || "");
  $("train").disabled = bad || !!answer.over_limit;
  if (bad) return;
  current = answer;
  const body = $("layers").tBodies[0];
  body.replaceChildren(...answer.rows.map((r) => {
    const tr = document.createElement("tr");
    const field = r.name === "head" ? `${r.centre[2]}×${r.centre[2]}` : `${r.field}×${r.field}`;
    for (const text of [`${r.name} ${r.token}`, r.output.join("×"), fmt(r.params), field,
                        r.jump || "", fmt(r.madds)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.addEventListener("mouseenter", () => {
      body.querySelectorAll("tr.hot").forEach((x) => x.classList.remove("hot"));
      tr.classList.add("hot");
      drawField(r);
    });
    return tr;
  }));
  const t = answer.totals;
  const blocks = answer.rows.filter((r) => r.name.startsWith("block"));
  const last = blocks.length ? blocks[blocks.length - 1] : answer.rows[answer.rows.length - 2];
  $("summary").textContent = `${fmt(t.params)} parameters · ${fmt(t.madds)} multiply-adds ` +
    `per image · the last block sees ${last ? `${last.field}×${last.field}` : "nothing"}; ` +
    `the head ${answer.whole_image ? "sees the whole image" : "misses part of the image"}.`;
  $("layers").dataset.params = String(t.params);
  drawField(last);
}

let typing = null;
for (const id of ["arch", "options"]) {
  $(id).addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(describe, 150); });
}
$("recipe").addEventListener("change", describe);

// --- 2. train it -------------------------------------------------------------------------
let job = null;
async function train() {
  let status, answer;
  try {
    [status, answer] = await api("POST", "/api/train", {
      ...request(), epochs: Number($("epochs").value), max_steps: Number($("max-steps").value),
    });
  } catch (error) {
    [status, answer] = [400, { error: error.message }];
  }
  if (status !== 202) { $("job-status").textContent = answer.error; return; }
  job = answer.id;
  $("cancel").disabled = false;
  $("train").disabled = true;
  follow();
}

async function follow() {
  const [, state] = await api("GET", `/api/train/${job}`);
  showJob(state);
  if (["running", "cancelling"].includes(state.state)) setTimeout(follow, 400);
  else { $("cancel").disabled = true; $("train").disabled = false; loadRuns(state.run); }
}

function showJob(s) {
  const done = s.steps ? (s.epoch - 1 + s.step / s.steps) / s.epochs : 0;
  $("bar").value = s.state === "done" ? 1 : Math.max(0, done);
  const where = s.steps ? `epoch ${s.epoch} of ${s.epochs}, step ${s.step} of ${s.steps}` : "starting";
  $("job-status").textContent = {
    running: `${s.id}: ${where} · ${s.seconds} s`, cancelling: `${s.id}: cancelling…`,
    done: `${s.id}: done in ${s.seconds} s · ${s.run_dir}`,
    cancelled: `${s.id}: cancelled, ${s.metrics.length} epoch(s) kept; ${s.resume} continues it`,
    failed: `${s.id}: ${s.error}`,
  }[s.state];
  $("job-status").dataset.state = s.state;
  $("epochs-table").tBodies[0].replaceChildren(...s.metrics.map((m) => {
    const tr = document.createElement("tr");
    tr.innerHTML = [m.epoch, m.train_loss.toFixed(4), (100 * m.train_accuracy).toFixed(2),
                    m.test_loss.toFixed(4), (100 * m.test_accuracy).toFixed(2),
                    m.seconds.toFixed(1)].map((x) => `<td>${x}</td>`).join("");
    return tr;
  }));
  drawCurves(s.metrics);
}

function drawCurves(metrics) {
  const ctx = $("curves").getContext("2d");
  const [w, h] = [280, 220];
  ctx.clearRect(0, 0, 560, 220);
  const panels = [["loss", (m) => m.train_loss, (m) => m.test_loss],
                  ["accuracy (%)", (m) => 100 * m.train_accuracy, (m) => 100 * m.test_accuracy]];
  panels.forEach(([title, train, test], k) => {
    const x0 = k * w + 40, y0 = 20, pw = w - 55, ph = h - 50;
    ctx.strokeStyle = "#b8bfca"; ctx.strokeRect(x0, y0, pw, ph);
    ctx.fillStyle = "#1d2430"; ctx.font = "12px system-ui"; ctx.fillText(title, x0, 14);
    if (!metrics.length) return;
    const values = metrics.flatMap((m) => [train(m), test(m)]);
    let [lo, hi] = [Math.min(...values), Math.max(...values)];
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const n = Math.max(metrics.length, 2);
    const X = (i) => x0 + pw * (metrics.length === 1 ? 0.5 : i / (n - 1));
    const Y = (v) => y0 + ph * (1 - (v - lo) / (hi - lo));
    ctx.fillText(hi.toPrecision(4), 0 + k * w, y0 + 10);
    ctx.fillText(lo.toPrecision(4), 0 + k * w, y0 + ph);
    [[train, "#2f6fed", "train"], [test, "#e4572e", "test"]].forEach(([f, color, name], j) => {
      ctx.strokeStyle = ctx.fillStyle = color;
      ctx.beginPath();
      metrics.forEach((m, i) => { const p = [X(i), Y(f(m))]; i ? ctx.lineTo(...p) : ctx.moveTo(...p); });
      ctx.stroke();
      metrics.forEach((m, i) => { ctx.beginPath(); ctx.arc(X(i), Y(f(m)), 3, 0, 7); ctx.fill(); });
      ctx.fillText(name, x0 + 8 + 45 * j, y0 + ph + 16);
    });
    ctx.fillStyle = "#5b6472";
    ctx.fillText(`epoch 1–${metrics.length}`, x0 + pw - 60, y0 + ph + 16);
  });
}

$("train").addEventListener("click", train);
$("cancel").addEventListener("click", () => job && api("DELETE", `/api/train/${job}`));

// --- 3. look inside ----------------------------------------------------------------------
async function loadRuns(select) {
  const [, answer] = await api("GET", "/api/runs");
  const menu = $("run");
  const keep = select || menu.value;
  menu.replaceChildren(...answer.runs.filter((r) => r.complete > 0).map((r) => {
    const option = document.createElement("option");
    option.value = r.name;
    const acc = r.accuracy == null ? "" : ` · ${(100 * r.accuracy).toFixed(2)} %`;
    const state = r.finished ? "" : ` · unfinished (${r.complete} of ${r.epochs} epochs)`;
    option.textContent = `${r.name} · ${r.arch}${acc}${state}`;
    return option;
  }));
  if ([...menu.options].some((o) => o.value === keep)) menu.value = keep;
  menu.dataset.count = String(menu.options.length);
}

const pad = $("pad");
const padCtx = pad.getContext("2d");
let drawing = false, last = null, sendTimer = null, inFlight = false, again = false;
function clearPad() {
  padCtx.fillStyle = "#000";
  padCtx.fillRect(0, 0, 280, 280);
  $("tiles").replaceChildren();
  $("digit").textContent = "?";
}
function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * 280 / box.width, (event.clientY - box.top) * 280 / box.height];
}
function stroke(from, to) {
  Object.assign(padCtx, { strokeStyle: "#fff", lineWidth: 20, lineCap: "round", lineJoin: "round" });
  padCtx.beginPath(); padCtx.moveTo(...from); padCtx.lineTo(...to); padCtx.stroke();
}
pad.addEventListener("pointerdown", (e) => {
  drawing = true; last = point(e); pad.setPointerCapture(e.pointerId); stroke(last, last);
});
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const next = point(e); stroke(last, next); last = next; scheduleInside();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => { if (drawing) { drawing = false; scheduleInside(0); } });
}
function scheduleInside(delay = 150) {
  clearTimeout(sendTimer);
  sendTimer = setTimeout(() => pad.toBlob(lookInside, "image/png"), delay);
}
async function lookInside(blob) {
  if (inFlight) { again = true; return; }
  inFlight = true;
  try {
    const [status, answer] = await api("POST", `/api/activations?run=${encodeURIComponent($("run").value)}`,
                                       blob, true);
    if (status !== 200) { $("inside-status").textContent = answer.error; return; }
    showInside(answer);
  } finally {
    inFlight = false;
    if (again) { again = false; pad.toBlob(lookInside, "image/png"); }
  }
}
function showInside(answer) {
  $("digit").textContent = answer.digit;
  $("digit").dataset.value = String(answer.digit);
  $("inside-status").textContent = `(${(100 * answer.probabilities[answer.digit]).toFixed(1)} %, ` +
    `${answer.run}${answer.finished ? "" : `, unfinished: epoch ${answer.epoch}`})`;
  $("tiles").replaceChildren(...answer.blocks.map((b) => {
    const figure = document.createElement("figure");
    const grid = document.createElement("div");
    grid.className = "grid";
    grid.style.gridTemplateColumns = `repeat(${Math.ceil(Math.sqrt(b.tiles.length))}, 28px)`;
    for (const tile of b.tiles) {
      const c = document.createElement("canvas");
      c.width = b.output[1]; c.height = b.output[0];
      const image = c.getContext("2d").createImageData(c.width, c.height);
      tile.flat().forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
      c.getContext("2d").putImageData(image, 0, 0);
      grid.append(c);
    }
    const caption = document.createElement("figcaption");
    caption.textContent = `${b.name} ${b.token}: ${b.output.join("×")}, field ${b.field}`;
    figure.append(caption, grid);
    return figure;
  }));
  $("tiles").dataset.blocks = String(answer.blocks.length);
}
$("clear").addEventListener("click", clearPad);
$("run").addEventListener("change", () => scheduleInside(0));

// --- 4. the basics study -----------------------------------------------------------------
async function loadBasics() {
  const [, answer] = await api("GET", "/api/basics");
  $("basics-note").textContent = `The seed net with one choice changed at a time, ` +
    `${answer.epochs} epochs of the default recipe, 3 seeds, final-epoch test accuracy ` +
    `(docs/architecture.md). "load" puts the row into the box above.`;
  $("basics").tBodies[0].replaceChildren(...answer.rows.map((r) => {
    const tr = document.createElement("tr");
    const acc = r.mean == null ? "not run here" : r.std == null ? r.mean.toFixed(2)
      : `${r.mean.toFixed(2)} ± ${r.std.toFixed(2)}`;
    tr.innerHTML = [r.what, fmt(r.params), `${r.field}×${r.field}`, fmt(r.madds), acc,
                    r.seconds_per_epoch ?? ""].map((x) => `<td>${x}</td>`).join("") + "<td></td>";
    const button = document.createElement("button");
    button.textContent = "load";
    button.dataset.name = r.name;
    button.addEventListener("click", () => {
      $("arch").value = r.request.arch;
      $("recipe").value = r.request.recipe;
      $("options").value = Object.entries(r.request.options).map(([k, v]) => `${k}=${v}`).join(" ");
      $("epochs").value = r.request.epochs;
      describe();
      $("type").scrollIntoView();
    });
    tr.lastChild.append(button);
    return tr;
  }));
}

for (const name of ["default", "fast", "tiny", "micro", "nano", "seed"]) {
  const option = document.createElement("option");
  option.value = option.textContent = name;
  $("recipe").append(option);
}
clearPad();
describe();
loadRuns();
loadBasics();
