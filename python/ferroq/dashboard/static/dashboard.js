// ferroq dashboard: live counts and charts from the SSE stream, the inbox
// countdown, live progress on a task's page. No framework, no CDN.
"use strict";

(function () {
  const base = document.body.dataset.base || "";

  // ---- the overview: counts and charts pushed by /stream ----------------

  function setText(el, text) {
    if (el && el.textContent !== String(text)) el.textContent = String(text);
  }

  function drawSeries(canvas, series, lines) {
    if (!canvas) return;
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 28;
    ctx.clearRect(0, 0, w, h);
    let top = 1;
    for (const p of series) for (const l of lines) if (p[l.key] != null) top = Math.max(top, p[l.key]);
    ctx.strokeStyle = "#ccd";
    ctx.fillStyle = "#667";
    ctx.font = "11px sans-serif";
    ctx.beginPath();
    ctx.moveTo(pad, 4); ctx.lineTo(pad, h - 16); ctx.lineTo(w - 4, h - 16);
    ctx.stroke();
    ctx.fillText(String(Math.round(top * 100) / 100), 2, 12);
    ctx.fillText("0", 2, h - 16);
    const n = Math.max(series.length, 2);
    const x = (i) => pad + (i * (w - pad - 6)) / (n - 1);
    const y = (v) => h - 16 - (v / top) * (h - 24);
    for (const l of lines) {
      ctx.strokeStyle = l.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let drawing = false;
      series.forEach((p, i) => {
        const v = p[l.key];
        if (v == null) { drawing = false; return; }
        if (drawing) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
        drawing = true;
      });
      ctx.stroke();
    }
  }

  function applySnapshot(s) {
    for (const [status, n] of Object.entries(s.totals)) {
      setText(document.querySelector(`[data-total="${status}"]`), n.toLocaleString());
    }
    setText(document.getElementById("workers-n"), s.workers);
    const table = document.getElementById("queues");
    if (table) {
      let unknown = false;
      for (const [queue, counts] of Object.entries(s.counts)) {
        const row = [...table.querySelectorAll("tr[data-queue]")].find((r) => r.dataset.queue === queue);
        if (!row) { unknown = true; continue; }
        for (const [status, n] of Object.entries(counts)) {
          setText(row.querySelector(`[data-count="${status}"]`), n);
          const retry = row.querySelector("button.retry-failed");
          if (retry && status === "failed") retry.disabled = n === 0;
        }
      }
      if (unknown) document.body.dataset.newQueues = "1";
    }
    const age = document.getElementById("read-age");
    if (age) setText(age, `${new Date(s.read_at * 1000).toLocaleTimeString()} (took ${s.took_s} s)`);
    drawSeries(document.getElementById("chart-throughput"), s.series, [
      { key: "done", color: "#2a8f4c" },
      { key: "failed", color: "#c0392b" },
    ]);
    drawSeries(document.getElementById("chart-latency"), s.series, [
      { key: "avg_ms", color: "#2c6fbb" },
      { key: "max_ms", color: "#b58900" },
    ]);
    const recent = document.getElementById("recent");
    if (recent && s.recent.length) {
      recent.replaceChildren(...s.recent.map((e) => {
        const li = document.createElement("li");
        const a = document.createElement("a");
        a.href = `${base}/tasks/${e.task_id}`;
        a.textContent = `#${e.task_id}`;
        const b = document.createElement("b");
        b.textContent = e.kind;
        const q = document.createElement("span");
        q.className = "muted";
        q.textContent = e.queue;
        li.append(a, ` ${e.name} `, b, " ", q);
        return li;
      }));
    }
    document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
  }

  const initial = document.getElementById("initial-snapshot");
  if (initial) {
    applySnapshot(JSON.parse(initial.textContent));
    const source = new EventSource(`${base}/stream`);
    source.addEventListener("snapshot", (ev) => applySnapshot(JSON.parse(ev.data)));
    source.addEventListener("open", () => { document.body.dataset.live = "1"; });
    source.addEventListener("error", () => { document.body.dataset.live = "0"; });
  }

  // ---- the inbox: the countdown to the answer deadline ------------------

  const countdown = document.getElementById("countdown");
  if (countdown) {
    const deadline = performance.now() + Number(countdown.dataset.remainingMs);
    const tick = () => {
      const left = Math.max(0, deadline - performance.now());
      const s = Math.ceil(left / 1000);
      setText(countdown, s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`);
      countdown.classList.toggle("urgent", s <= 10);
      if (left <= 0) {
        setText(countdown, "time is up");
        // The hand-out lapsed: show what the store hands out now.
        setTimeout(() => window.location.reload(), 1000);
        return;
      }
      setTimeout(tick, 250);
    };
    tick();
  }

  // ---- a task's page: live status and progress while it is unfinished ---

  const fields = document.getElementById("task-fields");
  if (fields && fields.dataset.finished === "0") {
    const id = fields.dataset.taskId;
    let last = document.getElementById("task-status").textContent;
    const poll = async () => {
      try {
        const r = await fetch(`${base}/api/tasks/${id}`, { credentials: "same-origin" });
        if (r.ok) {
          const t = await r.json();
          if (t.status !== last) { window.location.reload(); return; }
          if (t.progress != null) {
            document.getElementById("task-progress").value = t.progress;
            setText(document.getElementById("task-progress-text"), `${(t.progress * 100).toFixed(1)}%`);
          }
          if (t.finished) { window.location.reload(); return; }
          last = t.status;
        }
      } catch (e) { /* the server restarts: try again */ }
      setTimeout(poll, 1500);
    };
    setTimeout(poll, 1500);
  }

  // ---- the task list: open a task by id ---------------------------------

  const jump = document.getElementById("jump");
  if (jump) {
    jump.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const id = jump.querySelector("input[name=id]").value.trim();
      if (/^\d+$/.test(id)) window.location.href = `${base}/tasks/${id}`;
    });
  }
})();
