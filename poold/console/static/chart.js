// A small line chart of the pool over the last few minutes, drawn by hand on
// a canvas: busy, idle and starting workers, with the target dashed.

export const SERIES = [
  { key: "busy", colour: "#d9822b" },
  { key: "idle", colour: "#2e9e5b" },
  { key: "starting", colour: "#3b7dd8" },
  { key: "target", colour: "#888888", dash: [4, 3] },
];

export class PoolChart {
  constructor(canvas, { windowMs = 5 * 60 * 1000 } = {}) {
    this.canvas = canvas;
    this.windowMs = windowMs;
    this.samples = [];
  }

  add(figures, now = Date.now()) {
    this.samples.push({ t: now, ...figures });
    while (this.samples.length && this.samples[0].t < now - this.windowMs) {
      this.samples.shift();
    }
    this.draw(now);
  }

  draw(now = Date.now()) {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 120;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const pad = { left: 28, right: 6, top: 6, bottom: 16 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    let top = 1;
    for (const s of this.samples) {
      top = Math.max(top, s.max ?? 0, s.busy + s.idle + s.starting, s.target ?? 0);
    }
    const x = (t) => pad.left + plotW * (1 - (now - t) / this.windowMs);
    const y = (v) => pad.top + plotH * (1 - v / top);

    g.strokeStyle = "#dddddd";
    g.fillStyle = "#666666";
    g.lineWidth = 1;
    g.font = "10px sans-serif";
    for (const v of [0, Math.round(top / 2), top]) {
      g.beginPath();
      g.moveTo(pad.left, y(v) + 0.5);
      g.lineTo(pad.left + plotW, y(v) + 0.5);
      g.stroke();
      g.fillText(String(v), 2, y(v) + 3);
    }
    g.fillText(`-${Math.round(this.windowMs / 60000)} min`, pad.left, height - 3);
    g.fillText("now", pad.left + plotW - 18, height - 3);

    for (const series of SERIES) {
      g.strokeStyle = series.colour;
      g.lineWidth = 2;
      g.setLineDash(series.dash ?? []);
      g.beginPath();
      this.samples.forEach((s, i) => {
        const v = s[series.key] ?? 0;
        if (i === 0) {
          g.moveTo(x(s.t), y(v));
        } else {
          g.lineTo(x(s.t), y(v));
        }
      });
      g.stroke();
    }
    g.setLineDash([]);
  }
}
