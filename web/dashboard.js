// The dashboard: one server-sent event stream of snapshots, rendered into tables and a diagram of
// the chosen machine with its current state marked. No framework: the page stays small.
const params = new URLSearchParams(location.search);
const token = params.get("token") ?? sessionStorage.getItem("troupe.token") ?? "";
if (token) sessionStorage.setItem("troupe.token", token);
if (token) document.getElementById("playground-link").href = `/playground?token=${encodeURIComponent(token)}`;

const DIAGRAMS = {
  worker: "worker",
  slot: "slot",
  job: "job",
  session: "registry-session",
  dispatch: "registry-dispatch",
  connection: "connection",
};
let latest = { workers: [], slots: [], jobs: [] };
const svgCache = new Map();

const text = (value) => (value === null || value === undefined ? "" : String(value));
function row(cells, attrs = {}) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, v);
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell && typeof cell === "object") {
      td.textContent = text(cell.text);
      if (cell.className) td.className = cell.className;
    } else td.textContent = text(cell);
    tr.append(td);
  }
  return tr;
}
function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

function render(snapshot) {
  latest = snapshot;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  fill(
    "workers",
    snapshot.workers.map((w) =>
      row(
        [
          w.id,
          w.agentName,
          { text: w.state, className: "state" },
          { text: w.status, className: `status-${w.status}` },
          Number(w.load ?? 0).toFixed(2),
          `${w.jobCount ?? 0}/${w.maxProcesses ?? "?"}`,
        ],
        { "data-worker": w.id },
      ),
    ),
  );
  fill(
    "slots",
    snapshot.slots.map((s) =>
      row(
        [
          s.workerId,
          s.id,
          { text: s.state, className: "state" },
          s.pid,
          s.memoryMb === null || s.memoryMb === undefined ? "" : Number(s.memoryMb).toFixed(1),
          s.jobId,
        ],
        { "data-slot": s.id },
      ),
    ),
  );
  fill(
    "jobs",
    snapshot.jobs.map((j) =>
      row(
        [
          j.id,
          j.agentName,
          j.roomId,
          { text: j.status, className: `status-${j.status}` },
          { text: j.state, className: "state" },
          j.reason,
          j.workerId,
        ],
        { "data-job": j.id, "data-status": j.status },
      ),
    ),
  );
  renderMachineChoices();
  void renderDiagram();
}

/** The machines that have a live instance now, as "kind:id" choices. */
function instances() {
  const out = [];
  for (const w of latest.workers)
    if (w.machine)
      out.push({ key: `${w.machine}:${w.id}`, kind: w.machine, state: w.state, label: `${w.machine} ${w.id}` });
  for (const s of latest.slots) out.push({ key: `slot:${s.id}`, kind: "slot", state: s.state, label: `slot ${s.id}` });
  for (const j of latest.jobs)
    if (j.state && j.machine)
      out.push({ key: `${j.machine}:${j.id}`, kind: j.machine, state: j.state, label: `${j.machine} ${j.id}` });
  return out;
}
function renderMachineChoices() {
  const select = document.getElementById("machine");
  const current = select.value;
  const choices = instances();
  select.replaceChildren(...choices.map((c) => new Option(c.label, c.key)));
  if (choices.some((c) => c.key === current)) select.value = current;
}
async function svgFor(kind) {
  const file = DIAGRAMS[kind];
  if (!file) return null;
  if (!svgCache.has(file))
    svgCache.set(
      file,
      fetch(`/visualizations/${file}.svg`).then((r) => (r.ok ? r.text() : null)),
    );
  return svgCache.get(file);
}
async function renderDiagram() {
  const select = document.getElementById("machine");
  const chosen = instances().find((c) => c.key === select.value);
  const holder = document.getElementById("diagram");
  document.getElementById("machine-state").textContent = chosen ? chosen.state : "";
  if (!chosen) return holder.replaceChildren();
  const svg = await svgFor(chosen.kind);
  if (!svg) return holder.replaceChildren();
  if (holder.dataset.kind !== chosen.kind) {
    holder.innerHTML = svg;
    holder.dataset.kind = chosen.kind;
  }
  const machineId = chosen.kind;
  const wanted = new Set(chosen.state.split(" | ").map((path) => `${machineId}_${path.trim().replaceAll(".", "_")}`));
  for (const node of holder.querySelectorAll("g.node")) {
    const title = node.querySelector("title")?.textContent ?? "";
    node.classList.toggle("current", wanted.has(title));
  }
}
document.getElementById("machine").addEventListener("change", () => void renderDiagram());

function connect() {
  const url = `/events${token ? `?token=${encodeURIComponent(token)}` : ""}`;
  const events = new EventSource(url);
  events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  events.addEventListener("hello", (e) => {
    document.getElementById("source").textContent = JSON.parse(e.data).source;
  });
  events.onerror = () => {
    document.getElementById("source").textContent = "reconnecting…";
  };
}
connect();
