/* dropwatch: a small canvas time chart (stacked bars or lines), no dependencies.
 *
 *   const c = new DWChart(container, {onZoom(t0, t1), onPick(name)});
 *   c.setData({xs: [epoch s...], step: 10, series: [{name, color, values: [per second...]}]}, "stack");
 *
 * Hover shows a tooltip for the bucket under the pointer; a drag selects a time
 * range (onZoom, epoch seconds); a click on a bucket's segment picks its series.
 */
"use strict";

(function () {
  const X_STEPS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

  function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  function niceStep(raw) {
    if (!(raw > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }

  function fmtRate(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1).replace(/\.0$/, "");
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
    return v.toPrecision(2).replace(/\.?0+$/, "");
  }

  function pad2(n) { return n < 10 ? "0" + n : "" + n; }

  function fmtTick(t, step) {
    const d = new Date(t * 1000);
    const hm = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
    if (step < 60) return hm + ":" + pad2(d.getSeconds());
    if (step >= 86400 || (d.getHours() === 0 && d.getMinutes() === 0)) {
      return (d.getMonth() + 1) + "/" + d.getDate() + (step >= 86400 ? "" : " " + hm);
    }
    return hm;
  }

  function fmtTime(t) {
    const d = new Date(t * 1000);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " +
      pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  class DWChart {
    constructor(container, opts) {
      this.el = container;
      this.canvas = container.querySelector("canvas");
      this.tip = container.querySelector(".tip");
      this.opts = opts || {};
      this.data = null;
      this.mode = "stack";
      this.hover = -1;
      this.drag = null;
      this.ctx = this.canvas.getContext("2d");
      this.ro = new ResizeObserver(() => this.draw());
      this.ro.observe(this.el);
      const c = this.canvas;
      c.addEventListener("mousemove", (e) => this.onMove(e));
      c.addEventListener("mouseleave", () => { this.hover = -1; this.drag = null; this.tip.hidden = true; this.draw(); });
      c.addEventListener("mousedown", (e) => { const x = this.localX(e); if (this.inPlot(x)) this.drag = {x0: x, x1: x}; });
      window.addEventListener("mouseup", (e) => this.onUp(e));
      if (window.matchMedia) {
        window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.draw());
      }
    }

    setData(data, mode) {
      this.data = data;
      this.mode = mode || "stack";
      const n = data.xs.length;
      // Stack order: the biggest series at the bottom (series arrive sorted by total).
      this.stackTop = new Float64Array(n);
      for (const s of data.series) for (let i = 0; i < n; i++) this.stackTop[i] += s.values[i];
      this.draw();
    }

    localX(e) { return e.clientX - this.canvas.getBoundingClientRect().left; }
    inPlot(x) { return this.plot && x >= this.plot.x && x <= this.plot.x + this.plot.w; }

    bucketAt(x) {
      const p = this.plot, d = this.data;
      if (!p || !d || !d.xs.length) return -1;
      const i = Math.floor((x - p.x) / p.w * d.xs.length);
      return i >= 0 && i < d.xs.length ? i : -1;
    }

    onMove(e) {
      const x = this.localX(e);
      if (this.drag) this.drag.x1 = Math.max(this.plot.x, Math.min(this.plot.x + this.plot.w, x));
      const i = this.inPlot(x) ? this.bucketAt(x) : -1;
      this.hover = i;
      this.draw();
      this.showTip(i, e);
    }

    onUp(e) {
      const d = this.drag;
      this.drag = null;
      if (!d || !this.data) return;
      const p = this.plot, xs = this.data.xs;
      const lo = Math.min(d.x0, d.x1), hi = Math.max(d.x0, d.x1);
      if (hi - lo >= 6) {
        const t0 = xs[0] + (lo - p.x) / p.w * (xs.length * this.data.step);
        const t1 = xs[0] + (hi - p.x) / p.w * (xs.length * this.data.step);
        if (this.opts.onZoom) this.opts.onZoom(Math.floor(t0), Math.ceil(t1));
      } else if (this.opts.onPick && this.hover >= 0) {
        const name = this.seriesAtPointer(this.hover, e);
        if (name) this.opts.onPick(name);
      }
      this.draw();
    }

    seriesAtPointer(i, e) {
      if (this.mode !== "stack") return null;
      const p = this.plot, y = e.clientY - this.canvas.getBoundingClientRect().top;
      let acc = 0;
      for (const s of this.data.series) {
        const v = s.values[i];
        if (!v) continue;
        const top = p.y + p.h - (acc + v) / this.ymax * p.h;
        const bot = p.y + p.h - acc / this.ymax * p.h;
        if (y >= top - 1 && y <= bot + 1) return s.pick === false ? null : s.name;
        acc += v;
      }
      return null;
    }

    showTip(i, e) {
      const tip = this.tip, d = this.data;
      if (i < 0 || !d) { tip.hidden = true; return; }
      const rows = d.series.map((s) => [s, s.values[i]]).filter((r) => r[1] > 0).sort((a, b) => b[1] - a[1]);
      tip.textContent = "";
      const head = document.createElement("div");
      head.className = "tip-head";
      const total = rows.reduce((a, r) => a + r[1], 0);
      head.textContent = fmtTime(d.xs[i]) + " +" + d.step + "s \u00b7 " + fmtRate(total) + "/s \u00b7 " +
        Math.round(total * d.step) + " drops";
      tip.appendChild(head);
      for (const [s, v] of rows.slice(0, 12)) {
        const r = document.createElement("div");
        const sw = document.createElement("i");
        sw.style.background = s.color;
        r.appendChild(sw);
        r.appendChild(document.createTextNode(s.name + " "));
        const b = document.createElement("b");
        b.textContent = fmtRate(v) + "/s";
        r.appendChild(b);
        tip.appendChild(r);
      }
      if (rows.length > 12) {
        const r = document.createElement("div");
        r.className = "muted";
        r.textContent = "+" + (rows.length - 12) + " more";
        tip.appendChild(r);
      }
      if (!rows.length) {
        const r = document.createElement("div");
        r.className = "muted";
        r.textContent = "no drops";
        tip.appendChild(r);
      }
      tip.hidden = false;
      const box = this.el.getBoundingClientRect();
      const x = e.clientX - box.left, tw = tip.offsetWidth;
      tip.style.left = (x + 14 + tw > box.width ? Math.max(0, x - tw - 14) : x + 14) + "px";
      tip.style.top = "8px";
    }

    draw() {
      const cv = this.canvas, ctx = this.ctx;
      const w = this.el.clientWidth, h = this.el.clientHeight;
      if (!w || !h) return;
      const dpr = window.devicePixelRatio || 1;
      if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
        cv.width = Math.round(w * dpr);
        cv.height = Math.round(h * dpr);
        cv.style.width = w + "px";
        cv.style.height = h + "px";
      }
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      const d = this.data;
      if (!d || !d.xs.length) { this.plot = null; return; }
      const fg = cssVar("--muted", "#666"), grid = cssVar("--grid", "#ddd"), accent = cssVar("--fg", "#000");
      ctx.font = "11px system-ui, sans-serif";
      const n = d.xs.length;
      let ymax = 0;
      if (this.mode === "stack") { for (let i = 0; i < n; i++) ymax = Math.max(ymax, this.stackTop[i]); }
      else { for (const s of d.series) for (let i = 0; i < n; i++) ymax = Math.max(ymax, s.values[i]); }
      const ystep = niceStep((ymax || 1) / 4);
      ymax = Math.max(ystep, Math.ceil((ymax || 1) / ystep - 1e-9) * ystep);
      this.ymax = ymax;
      let yw = 0;
      for (let v = 0; v <= ymax + 1e-9; v += ystep) yw = Math.max(yw, ctx.measureText(fmtRate(v)).width);
      const p = this.plot = {x: Math.ceil(yw) + 10, y: 8, w: 0, h: 0};
      p.w = w - p.x - 8;
      p.h = h - p.y - 20;
      if (p.w < 20 || p.h < 20) return;

      // Grid and y axis.
      ctx.strokeStyle = grid;
      ctx.fillStyle = fg;
      ctx.lineWidth = 1;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (let v = 0; v <= ymax + 1e-9; v += ystep) {
        const y = Math.round(p.y + p.h - v / ymax * p.h) + 0.5;
        ctx.beginPath(); ctx.moveTo(p.x, y); ctx.lineTo(p.x + p.w, y); ctx.stroke();
        ctx.fillText(fmtRate(v), p.x - 5, y);
      }
      // X axis: ticks on local-time multiples, at least ~90 px apart.
      const t0 = d.xs[0], span = n * d.step, pxPerS = p.w / span;
      const tstep = X_STEPS.find((s) => s * pxPerS >= 90) || X_STEPS[X_STEPS.length - 1];
      const tz = new Date(t0 * 1000).getTimezoneOffset() * 60;
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      for (let t = Math.ceil((t0 - tz) / tstep) * tstep + tz; t <= t0 + span; t += tstep) {
        const x = Math.round(p.x + (t - t0) * pxPerS) + 0.5;
        ctx.beginPath(); ctx.moveTo(x, p.y + p.h); ctx.lineTo(x, p.y + p.h + 4); ctx.stroke();
        const label = fmtTick(t, tstep), half = ctx.measureText(label).width / 2;
        ctx.fillText(label, Math.min(Math.max(x, p.x + half), w - half - 1), p.y + p.h + 6);
      }

      const bw = p.w / n;
      const gap = bw > 5 ? 1 : 0;
      if (this.mode === "stack") {
        const acc = new Float64Array(n);
        for (const s of d.series) {
          ctx.fillStyle = s.color;
          for (let i = 0; i < n; i++) {
            const v = s.values[i];
            if (!v) continue;
            const y1 = p.y + p.h - (acc[i] + v) / ymax * p.h, y0 = p.y + p.h - acc[i] / ymax * p.h;
            acc[i] += v;
            ctx.fillRect(p.x + i * bw, y1, Math.max(1, bw - gap), Math.max(1, y0 - y1));
          }
        }
      } else {
        ctx.lineWidth = 1.5;
        ctx.lineJoin = "round";
        for (let k = d.series.length - 1; k >= 0; k--) {
          const s = d.series[k];
          ctx.strokeStyle = s.color;
          ctx.beginPath();
          for (let i = 0; i < n; i++) {
            const x = p.x + (i + 0.5) * bw, y = p.y + p.h - s.values[i] / ymax * p.h;
            if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
          }
          ctx.stroke();
        }
      }
      // Base line.
      ctx.strokeStyle = fg;
      ctx.beginPath(); ctx.moveTo(p.x, p.y + p.h + 0.5); ctx.lineTo(p.x + p.w, p.y + p.h + 0.5); ctx.stroke();

      if (this.hover >= 0 && !this.drag) {
        ctx.fillStyle = accent;
        ctx.globalAlpha = 0.08;
        ctx.fillRect(p.x + this.hover * bw, p.y, Math.max(1, bw), p.h);
        ctx.globalAlpha = 1;
      }
      if (this.drag) {
        const lo = Math.min(this.drag.x0, this.drag.x1), hi = Math.max(this.drag.x0, this.drag.x1);
        ctx.fillStyle = cssVar("--accent", "#36c");
        ctx.globalAlpha = 0.18;
        ctx.fillRect(lo, p.y, hi - lo, p.h);
        ctx.globalAlpha = 1;
      }
    }
  }

  DWChart.fmtRate = fmtRate;
  DWChart.fmtTime = fmtTime;
  window.DWChart = DWChart;
})();
