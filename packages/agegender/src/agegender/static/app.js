// The page of `agegender serve`: send the chosen photo to POST /v1/predict, draw each face's
// box and label on a canvas from the JSON answer, and list the faces. No other host is used.
"use strict";

const COLOURS = { female: "rgb(230, 60, 140)", male: "rgb(40, 120, 230)" };
const MAX_SIDE = 900; // the canvas shows the photo at most this wide or tall (CSS pixels)

const $ = (id) => document.getElementById(id);

function label(face) {
  // as agegender.annotate.label: "F 31" / "M 8"
  return `${face.gender[0].toUpperCase()} ${Math.round(face.age)}`;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function loadImage(file) {
  return new Promise((resolve) => {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => resolve(img); // Chromium and Firefox apply the EXIF orientation, as the server does
    img.onerror = () => resolve(null); // a format the browser cannot show: list the faces anyway
    img.src = url;
  });
}

function draw(img, faces) {
  const canvas = $("photo");
  if (!img) {
    canvas.hidden = true;
    return;
  }
  const scale = Math.min(1, MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  canvas.dataset.scale = String(scale);
  canvas.hidden = false;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const side = Math.max(canvas.width, canvas.height);
  const line = Math.max(2, Math.round(side / 300));
  const fontSize = Math.max(12, Math.round(side / 40));
  ctx.font = `bold ${fontSize}px sans-serif`;
  ctx.textBaseline = "top";
  for (const face of faces) {
    const [x, y, w, h] = face.box.map((v) => v * scale);
    const colour = COLOURS[face.gender] || "rgb(250, 200, 0)";
    ctx.strokeStyle = colour;
    ctx.lineWidth = line;
    ctx.strokeRect(x, y, w, h);
    const text = label(face);
    const pad = Math.max(2, Math.round(fontSize / 5));
    const tw = ctx.measureText(text).width;
    const th = fontSize;
    const ty = y - th - 2 * pad >= 0 ? y - th - 2 * pad : y;
    ctx.fillStyle = colour;
    ctx.fillRect(x, ty, tw + 2 * pad, th + 2 * pad);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x + pad, ty + pad);
  }
  canvas.dataset.faces = String(faces.length);
}

function list(faces, errors) {
  const body = $("faces").tBodies[0];
  body.replaceChildren();
  for (const face of faces) {
    const row = body.insertRow();
    const cells = [face.face, null, face.gender, face.age.toFixed(1), face.p_female.toFixed(3),
      face.confidence.toFixed(3), face.box.join(" ")];
    cells.forEach((value, i) => {
      const cell = row.insertCell();
      if (i === 1) {
        cell.className = "label";
        const tag = document.createElement("span");
        tag.textContent = label(face);
        tag.style.background = COLOURS[face.gender] || "rgb(250, 200, 0)";
        cell.append(tag);
      } else {
        cell.textContent = String(value);
      }
    });
  }
  $("faces").hidden = faces.length === 0;
  $("errors").replaceChildren(...errors.map((e) => {
    const item = document.createElement("li");
    item.textContent = `${e.file}: ${e.reason}`;
    return item;
  }));
}

async function send(file) {
  if (!file) return;
  setStatus(`Finding the faces in ${file.name}…`);
  document.body.dataset.state = "busy";
  const body = new FormData();
  body.append("image", file, file.name);
  try {
    const [response, img] = await Promise.all([
      fetch("/v1/predict", { method: "POST", body }),
      loadImage(file),
    ]);
    const data = await response.json();
    const faces = data.predictions || [];
    const errors = data.errors || [];
    $("result").hidden = false;
    draw(response.ok ? img : null, faces);
    list(faces, errors);
    if (!response.ok) {
      setStatus(data.detail || `the server answered ${response.status}`, true);
    } else if (faces.length) {
      setStatus(`${faces.length} face${faces.length > 1 ? "s" : ""} in ${file.name}.`);
    } else {
      setStatus(`No face found in ${file.name}.`);
    }
  } catch (error) {
    setStatus(`Could not reach the server: ${error}`, true);
  } finally {
    document.body.dataset.state = "done";
  }
}

async function showModel() {
  try {
    const response = await fetch("/v1/models");
    const model = (await response.json()).models[0];
    const figures = model.figures && model.figures.gender_accuracy != null
      ? ` Held-out test: gender accuracy ${(100 * model.figures.gender_accuracy).toFixed(1)} %, ` +
        `age error ${model.figures.age_mae} years (mean absolute).`
      : "";
    $("model").textContent = `Age and gender of the faces in a photo, by the model ${model.name} ` +
      `(faces found with ${model.detector}).${figures}`;
  } catch (error) {
    // the page still works without the model's description
  }
}

function init() {
  const input = $("file");
  const drop = $("drop");
  input.addEventListener("change", () => send(input.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    send(event.dataTransfer.files[0]);
  });
  showModel();
  document.body.dataset.state = "ready";
}

document.addEventListener("DOMContentLoaded", init);
