// A 2D face driven by ARKit blendshape weights, and curves of chosen blendshapes over time.
// Blendshapes are looked up by name in the `names` list each LAM-A2E answer carries, so nothing here repeats the
// 52-name list; a name a response lacks reads as 0.

export class Blendshapes {
  constructor(names) {
    this.names = names;
    this.index = new Map(names.map((name, i) => [name, i]));
  }

  reader(frame) {
    return (name) => frame?.[this.index.get(name)] ?? 0;
  }
}

const SIDES = [["Left", -1], ["Right", 1]];

// `w(name)` gives a weight in [0, 1]. The proportions only need to make each group's movement visible: jaw and lips,
// smile and frown at the mouth corners, lids (blinks, wide, squint), gaze, brows, cheeks.
export function drawFace(ctx, w) {
  const { width, height } = ctx.canvas;
  const s = Math.min(width, height) / 300;
  ctx.save();
  ctx.clearRect(0, 0, width, height);
  ctx.translate(width / 2, height / 2);
  ctx.scale(s, s);
  ctx.lineCap = "round";

  const jaw = Math.max(0, w("jawOpen") - 0.5 * w("mouthClose"));
  const jawShift = 12 * (w("jawRight") - w("jawLeft"));
  ctx.fillStyle = "#f1c9a5";
  ctx.strokeStyle = "#7a5230";
  ctx.lineWidth = 3;
  ctx.beginPath();
  ctx.ellipse(jawShift / 2, 8 + 10 * jaw, 100 + 10 * w("cheekPuff"), 128 + 10 * jaw, 0, 0, 2 * Math.PI);
  ctx.fill();
  ctx.stroke();

  for (const [side, sign] of SIDES) {
    const x = 42 * sign;
    const open = Math.max(0.04, Math.min(1.6, 1 - w(`eyeBlink${side}`) + 0.6 * w(`eyeWide${side}`) - 0.35 * w(`eyeSquint${side}`)));
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.ellipse(x, -25, 24, 13 * open, 0, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    // gaze: "in" is towards the nose, so its direction flips with the side
    const gazeX = 9 * sign * (w(`eyeLookOut${side}`) - w(`eyeLookIn${side}`));
    const gazeY = 6 * (w(`eyeLookDown${side}`) - w(`eyeLookUp${side}`));
    ctx.fillStyle = "#2d4a6b";
    ctx.beginPath();
    ctx.ellipse(x + gazeX, -25 + gazeY * open, 7, 7 * Math.min(1, open), 0, 0, 2 * Math.PI);
    ctx.fill();

    const inner = -58 - 20 * w("browInnerUp") + 12 * w(`browDown${side}`);
    const outer = -54 - 20 * w(`browOuterUp${side}`) + 6 * w(`browDown${side}`);
    ctx.lineWidth = 6;
    ctx.beginPath();
    ctx.moveTo(14 * sign, inner);
    ctx.quadraticCurveTo(40 * sign, Math.min(inner, outer) - 6, 68 * sign, outer);
    ctx.stroke();
    ctx.lineWidth = 3;

    ctx.fillStyle = `rgba(230, 110, 110, ${0.15 + 0.5 * w(`cheekSquint${side}`)})`;
    ctx.beginPath();
    ctx.arc(62 * sign, 22, 16 + 6 * w("cheekPuff"), 0, 2 * Math.PI);
    ctx.fill();
  }

  ctx.beginPath();
  ctx.moveTo(0, -10);
  ctx.lineTo(-8, 22);
  ctx.lineTo(4, 24);
  ctx.stroke();

  const smile = (w("mouthSmileLeft") + w("mouthSmileRight")) / 2;
  const frown = (w("mouthFrownLeft") + w("mouthFrownRight")) / 2;
  const stretch = (w("mouthStretchLeft") + w("mouthStretchRight")) / 2;
  const round = Math.max(w("mouthPucker"), w("mouthFunnel"));
  const half = 34 + 18 * smile + 12 * stretch - 16 * round;
  const mx = jawShift + 12 * (w("mouthRight") - w("mouthLeft"));
  const corner = 62 - 14 * smile + 12 * frown;
  const upper = 58 - 8 * (w("mouthUpperUpLeft") + w("mouthUpperUpRight")) / 2;
  const lower = 64 + 46 * jaw + 10 * (w("mouthLowerDownLeft") + w("mouthLowerDownRight")) / 2 + 10 * w("mouthFunnel");
  ctx.fillStyle = "#7b2331";
  ctx.strokeStyle = "#a3424f";
  ctx.lineWidth = 5;
  ctx.beginPath();
  ctx.moveTo(mx - half, corner);
  ctx.quadraticCurveTo(mx, upper - 6, mx + half, corner);
  ctx.quadraticCurveTo(mx, lower + 6, mx - half, corner);
  ctx.closePath();
  ctx.fill();
  ctx.stroke();
  ctx.restore();
}

const COLOURS = ["#d9480f", "#1971c2", "#2f9e44", "#9c36b5", "#e67700", "#0c8599", "#c2255c", "#5c940d"];

// `series` is [[name, values]]; values are weights per frame at `fps`, `cursor` the frame being shown.
export function drawCurves(ctx, series, fps, cursor) {
  const { width, height } = ctx.canvas;
  const pad = { left: 34, right: 8, top: 8, bottom: 20 };
  const frames = Math.max(2, ...series.map(([, values]) => values.length));
  const x = (i) => pad.left + (i / (frames - 1)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - v * (height - pad.top - pad.bottom);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px sans-serif";
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#555";
  ctx.lineWidth = 1;
  for (const v of [0, 0.5, 1]) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(width - pad.right, y(v));
    ctx.stroke();
    ctx.fillText(v.toFixed(1), 4, y(v) + 4);
  }
  ctx.fillText(`${((frames - 1) / fps).toFixed(1)} s`, width - pad.right - 34, height - 5);
  series.forEach(([name, values], k) => {
    ctx.strokeStyle = ctx.fillStyle = COLOURS[k % COLOURS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
    ctx.fillText(name, pad.left + 6 + 110 * (k % 4), pad.top + 10 + 13 * Math.floor(k / 4));
  });
  if (cursor !== null) {
    ctx.strokeStyle = "#000";
    ctx.beginPath();
    ctx.moveTo(x(cursor), pad.top);
    ctx.lineTo(x(cursor), height - pad.bottom);
    ctx.stroke();
  }
}
