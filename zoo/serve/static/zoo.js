// zoo serve's page script: live study table, sortable and filterable tables, and "try it" uploads.
// Every value that comes from the server is set with textContent, never as HTML.
"use strict";

function formatSeconds(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value < 60) return `${Math.round(value)}s`;
  if (value < 3600) return `${Math.floor(value / 60)}m${String(Math.floor(value % 60)).padStart(2, "0")}s`;
  return `${Math.floor(value / 3600)}h${String(Math.floor((value % 3600) / 60)).padStart(2, "0")}m`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function liveStudy() {
  const summary = document.getElementById("summary");
  if (!summary) return;
  const body = document.querySelector("#runs tbody");
  const study = location.pathname.split("/")[2];
  async function refresh() {
    try {
      const response = await fetch(summary.dataset.api, {credentials: "same-origin"});
      if (!response.ok) return;
      const state = await response.json();
      document.getElementById("counts").textContent =
        Object.keys(state.counts).sort().map((k) => `${k} ${state.counts[k]}`).join(", ");
      document.getElementById("total").textContent = state.total;
      document.getElementById("eta").textContent = formatSeconds(state.eta_seconds);
      const rows = state.rows.map((r) => {
        const tr = document.createElement("tr");
        tr.dataset.run = r.run_id;
        tr.dataset.state = r.state;
        const first = cell(tr, "");
        if (r.state === "done" || r.state === "failed") {
          const link = document.createElement("a");
          link.href = `/s/${study}/run/${encodeURIComponent(r.run_id)}`;
          link.textContent = r.run_id;
          first.appendChild(link);
        } else {
          first.textContent = r.run_id;
        }
        cell(tr, r.dataset); cell(tr, r.backbone); cell(tr, r.head);
        cell(tr, r.state, `state ${r.state}`); cell(tr, r.host || "");
        cell(tr, r.epochs_total ? `${r.epochs_done}/${r.epochs_total}` : `${r.epochs_done}`);
        cell(tr, formatSeconds(r.elapsed_seconds)); cell(tr, formatSeconds(r.estimate_seconds));
        cell(tr, formatSeconds(r.eta_seconds)); cell(tr, r.error || r.problem || "", "reason");
        return tr;
      });
      body.replaceChildren(...rows);
    } catch (error) {
      // the server may be restarting; the next tick tries again
    }
  }
  setInterval(refresh, 2000);
}

function sortableTables() {
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("thead th").forEach((header, column) => {
      header.addEventListener("click", () => {
        const ascending = !header.classList.contains("sorted-asc");
        table.querySelectorAll("thead th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
        header.classList.add(ascending ? "sorted-asc" : "sorted-desc");
        const numeric = header.dataset.type === "number";
        const body = table.tBodies[0];
        const value = (row) => {
          const td = row.children[column];
          const raw = td.dataset.value !== undefined ? td.dataset.value : td.textContent.trim();
          if (!numeric) return raw;
          const number = parseFloat(raw);
          return Number.isNaN(number) ? Infinity : number;
        };
        const rows = Array.from(body.rows).sort((a, b) => {
          const x = value(a), y = value(b);
          const order = numeric ? x - y : String(x).localeCompare(String(y));
          return ascending ? order : -order;
        });
        body.replaceChildren(...rows);
      });
    });
  });
}

function filters() {
  document.querySelectorAll("section.dataset").forEach((section) => {
    const text = section.querySelector("input.filter");
    const facets = section.querySelectorAll("select.facet");
    const apply = () => {
      const words = (text ? text.value : "").toLowerCase().split(/\s+/).filter(Boolean);
      section.querySelectorAll("table.leaderboard tbody tr").forEach((row) => {
        const haystack = row.textContent.toLowerCase();
        let shown = words.every((word) => haystack.includes(word));
        facets.forEach((facet) => {
          if (facet.value && row.dataset[facet.dataset.key] !== facet.value) shown = false;
        });
        row.hidden = !shown;
      });
    };
    if (text) text.addEventListener("input", apply);
    facets.forEach((facet) => facet.addEventListener("change", apply));
  });
}

function showAnswers(container, answers) {
  const items = answers.map((answer) => {
    const div = document.createElement("div");
    div.className = "answer";
    const name = document.createElement("strong");
    name.textContent = answer.name;
    div.appendChild(name);
    if (answer.error) {
      const error = document.createElement("span");
      error.className = "error";
      error.textContent = `: ${answer.error}`;
      div.appendChild(error);
      return div;
    }
    const list = document.createElement("ol");
    list.className = "top-k";
    answer.top_k.forEach((item) => {
      const li = document.createElement("li");
      li.dataset.label = item.label;
      li.textContent = `${item.label} ${(100 * item.probability).toFixed(1)} %`;
      list.appendChild(li);
    });
    div.appendChild(list);
    if (answer.overlay) {
      const image = document.createElement("img");
      image.src = answer.overlay;
      image.alt = `predicted mask of ${answer.name}`;
      div.appendChild(image);
    }
    return div;
  });
  container.replaceChildren(...items);
}

async function filesOf(items) {
  // A dropped folder arrives as a directory entry: read its image files (recursively).
  const files = [];
  async function walk(entry) {
    if (entry.isFile) {
      files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      let batch;
      do {
        batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        for (const child of batch) await walk(child);
      } while (batch.length);
    }
  }
  for (const item of items) {
    const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    if (entry) await walk(entry); else if (item.getAsFile) files.push(item.getAsFile());
  }
  return files;
}

function tryIt() {
  const drop = document.getElementById("drop");
  if (!drop) return;
  const answers = document.getElementById("answers");
  const maxFiles = parseInt(drop.dataset.maxFiles, 10);
  async function send(files) {
    if (!files.length) return;
    if (files.length > maxFiles) {
      showAnswers(answers, [{name: `${files.length} files`, error: `send at most ${maxFiles} images at once`}]);
      return;
    }
    const form = new FormData();
    files.forEach((file) => form.append("images", file, file.name));
    answers.textContent = "predicting…";
    const response = await fetch(drop.dataset.url, {method: "POST", body: form, credentials: "same-origin"});
    const reply = await response.json().catch(() => ({error: `the server answered ${response.status}`}));
    if (reply.error) showAnswers(answers, [{name: "upload", error: reply.error}]);
    else showAnswers(answers, reply.answers);
  }
  document.getElementById("images").addEventListener("change", (event) => send(Array.from(event.target.files)));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    send(await filesOf(Array.from(event.dataTransfer.items)));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  liveStudy();
  sortableTables();
  filters();
  tryIt();
});
