// Drawing landmarks on a canvas laid over a video or image. Shared by both pages.
// Points are in pixels of the decoded frame; the canvas is sized to that frame.

const JAW = [0, 17], BROW_R = [17, 22], BROW_L = [22, 27], NOSE = [27, 31], NOSE_LOW = [31, 36];
const EYE_R = [36, 42], EYE_L = [42, 48], LIPS_OUT = [48, 60], LIPS_IN = [60, 68];
const OPEN = [JAW, BROW_R, BROW_L, NOSE, NOSE_LOW];
const CLOSED = [EYE_R, EYE_L, LIPS_OUT, LIPS_IN];

function path(ctx, points, [a, b], close) {
  ctx.moveTo(points[a][0], points[a][1]);
  for (let i = a + 1; i < b; i++) ctx.lineTo(points[i][0], points[i][1]);
  if (close) ctx.closePath();
}

/** The 68 points as lines and dots. */
export function drawLandmarks(ctx, faces, scale = 1) {
  ctx.save();
  ctx.lineWidth = 1.5 / scale;
  ctx.strokeStyle = "rgba(80, 220, 160, 0.9)";
  ctx.fillStyle = "rgba(255, 255, 255, 0.95)";
  for (const face of faces) {
    ctx.beginPath();
    for (const r of OPEN) path(ctx, face.points, r, false);
    for (const r of CLOSED) path(ctx, face.points, r, true);
    ctx.stroke();
    for (const [x, y] of face.points) {
      ctx.beginPath();
      ctx.arc(x, y, 1.6 / scale, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  ctx.restore();
}

/** Lips recoloured: the outer lip polygon minus the inner one, blurred, blended at ~40%. */
export function drawLips(ctx, faces, color = "rgb(200, 20, 90)") {
  ctx.save();
  ctx.globalAlpha = 0.4;
  ctx.filter = "blur(3px)";
  ctx.fillStyle = color;
  for (const face of faces) {
    ctx.beginPath();
    path(ctx, face.points, LIPS_OUT, true);
    path(ctx, face.points, LIPS_IN, true);
    ctx.fill("evenodd");
  }
  ctx.restore();
}

/** Each identified face's name (or "unknown") on a dark label above its box. */
export function drawNames(ctx, faces, scale = 1) {
  ctx.save();
  const size = Math.round(14 / scale);
  ctx.font = `600 ${size}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  for (const face of faces) {
    if (!("identity" in face)) continue; // not identified (empty gallery): no label
    const label = face.identity ? face.identity.name : "unknown";
    const [x, y] = face.box;
    const w = ctx.measureText(label).width + 10 / scale;
    const h = size + 8 / scale;
    const top = Math.max(0, y - h - 2 / scale);
    ctx.fillStyle = "rgba(20, 20, 20, 0.75)";
    ctx.fillRect(x, top, w, h);
    ctx.fillStyle = face.identity ? "rgb(80, 220, 160)" : "rgb(200, 200, 200)";
    ctx.fillText(label, x + 5 / scale, top + 4 / scale);
  }
  ctx.restore();
}

export function drawFaces(ctx, faces, mode, scale = 1) {
  if (mode === "lips") drawLips(ctx, faces);
  else if (mode === "landmarks") drawLandmarks(ctx, faces, scale);
  if (mode !== "none") drawNames(ctx, faces, scale);
}

/** Who appears in a session's frames: [{name, first_ms, last_ms, frames}], most frames first
 * ("unknown" for faces the gallery does not hold). */
export function appearances(frames) {
  const seen = new Map();
  for (const frame of frames) {
    for (const face of frame.faces ?? []) {
      if (!("identity" in face)) continue;
      const name = face.identity ? face.identity.name : "unknown";
      const entry = seen.get(name) ?? { name, first_ms: frame.pts_ms, last_ms: frame.pts_ms, frames: 0 };
      entry.last_ms = frame.pts_ms;
      entry.frames += 1;
      seen.set(name, entry);
    }
  }
  return [...seen.values()].sort((a, b) => b.frames - a.frames);
}

/** Index of the last frame with pts_ms <= t in frames sorted by pts (binary search). */
export function frameAt(frames, tMs) {
  let lo = 0, hi = frames.length - 1, best = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (frames[mid].pts_ms <= tMs) { best = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return best;
}

/**
 * A session's timeline on a canvas, one column per slice of frames (by index, 0..total): the
 * upper band is the faces present, coloured by who (`colours` by name; grey for a face without a
 * name, dark for none); the lower band is red-hatched where frames have no landmarks (skipped
 * live and not filled yet, or not analysed). Returns what it drew: {missing, withFaces, columns}.
 */
export function drawTimeline(ctx, frames, total, colours = {}) {
  const { width, height } = ctx.canvas;
  const n = Math.max(total, frames.length, 1);
  const byIndex = new Array(n);
  for (const f of frames) byIndex[f.index] = f;
  ctx.clearRect(0, 0, width, height);
  const band = Math.round(height * 0.7), gap = Math.max(1, Math.round(height * 0.06));
  let missing = 0, withFaces = 0;
  for (let i = 0; i < n; i++) {
    const f = byIndex[i];
    if (!f || f.skipped) missing += 1;
    else if (f.faces?.length) withFaces += 1;
  }
  for (let x = 0; x < width; x++) {
    const from = Math.floor((x * n) / width), to = Math.max(from + 1, Math.floor(((x + 1) * n) / width));
    const counts = new Map();
    let faces = 0, none = 0, lost = 0;
    for (let i = from; i < to && i < n; i++) {
      const f = byIndex[i];
      if (!f || f.skipped) { lost += 1; continue; }
      if (!f.faces?.length) { none += 1; continue; }
      faces += 1;
      for (const face of f.faces) {
        const name = face.identity?.name;
        if (name && colours[name]) counts.set(name, (counts.get(name) ?? 0) + 1);
      }
    }
    let colour = "#3a3f4b";
    if (faces && faces >= none) {
      const who = [...counts.entries()].sort((a, b) => b[1] - a[1])[0];
      colour = who ? colours[who[0]] : "#9aa3b2";
    }
    ctx.fillStyle = colour;
    ctx.fillRect(x, 0, 1, band);
    if (lost) {
      ctx.fillStyle = (x % 4) < 2 ? "#ff5d6c" : "#5c2330";
      ctx.fillRect(x, band + gap, 1, height - band - gap);
    }
  }
  return { missing, withFaces, columns: width };
}

/** The frame under a click at `fraction` (0..1) of the timeline's width, or null. */
export function timelineAt(frames, total, fraction) {
  if (!frames.length) return null;
  const n = Math.max(total, frames.length, 1);
  const index = Math.min(n - 1, Math.max(0, Math.floor(fraction * n)));
  let best = frames[0];
  for (const f of frames) {
    if (f.index > index) break;
    best = f;
  }
  return best;
}
