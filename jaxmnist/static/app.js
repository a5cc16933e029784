// Draw on #pad; every change is sent to POST /api/predict as a PNG (at most one request
// in flight, the newest drawing always sent last).
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const digit = document.getElementById("digit");
const status = document.getElementById("status");
const top3 = document.getElementById("top3");

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  seen.clearRect(0, 0, 28, 28);
  digit.textContent = "?";
  top3.replaceChildren();
  setStatus("draw with mouse, pen or finger");
  pad.dataset.predictions = "0";
}

function setStatus(text, isError = false) {
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// --- drawing: pointer events cover mouse, pen and touch --------------------------------
let drawing = false;
let last = null;

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  last = point(event);
  pad.setPointerCapture(event.pointerId);
  stroke(last, last);
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const next = point(event);
  stroke(last, next);
  last = next;
  schedule();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (!drawing) return;
    drawing = false;
    schedule(0);
  });
}

function stroke(from, to) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...from);
  ctx.lineTo(...to);
  ctx.stroke();
}

// --- predictions -------------------------------------------------------------------
let timer = null;
let inFlight = false;
let pending = false;

function schedule(delay = 120) {
  clearTimeout(timer);
  timer = setTimeout(() => pad.toBlob(send, "image/png"), delay);
}

async function send(blob) {
  if (inFlight) { pending = true; return; }
  inFlight = true;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: blob });
    show(await response.json());
  } catch (error) {
    setStatus(`the server did not answer (${error.message})`, true);
  } finally {
    inFlight = false;
    if (pending) { pending = false; pad.toBlob(send, "image/png"); }
  }
}

function show(result) {
  if (result.error) {
    digit.textContent = "?";
    top3.replaceChildren();
    setStatus(result.error, true);
    return;
  }
  digit.textContent = result.digit;
  setStatus(`${(100 * result.top3[0][1]).toFixed(1)} % sure · ${result.ms} ms`);
  top3.replaceChildren(...result.top3.map(([d, p]) => {
    const item = document.createElement("li");
    item.innerHTML = `<b>${d}</b><div class="bar"><span style="width:${(100 * p).toFixed(1)}%">` +
                     `</span></div><span>${(100 * p).toFixed(1)} %</span>`;
    return item;
  }));
  const pixels = seen.createImageData(28, 28);
  result.input.flat().forEach((v, i) => {
    const level = Math.round(255 * v);
    pixels.data.set([level, level, level, 255], 4 * i);
  });
  seen.putImageData(pixels, 0, 0);
  pad.dataset.predictions = String(Number(pad.dataset.predictions) + 1);
  digit.dataset.value = String(result.digit);
}

document.getElementById("clear").addEventListener("click", clearPad);
document.getElementById("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) send(file);
  event.target.value = "";
});

fetch("/api/info").then((r) => r.json()).then((info) => {
  const accuracy = info.accuracy == null ? "" :
    ` · ${(100 * info.accuracy).toFixed(2)} % ${info.accuracy_on.replace("_accuracy", "")} ` +
    `accuracy at epoch ${info.epoch}`;
  document.getElementById("run-info").textContent =
    `run ${info.run} · ${info.params.toLocaleString("en")} parameters${accuracy}`;
}).catch(() => setStatus("no model info", true));

clearPad();
