// The dashboard: one server-sent event stream of snapshots, rendered into tables and a diagram of
// the chosen machine with every active state marked and, beside it, the recent events of the chosen
// machine's actor, polled while it is shown (a worker's page keeps them for its root, slots and jobs;
// the registry's for its sessions and dispatches). No framework: the page stays small.
const params = new URLSearchParams(location.search);
const token = params.get("token") ?? sessionStorage.getItem("troupe.token") ?? "";
if (token) sessionStorage.setItem("troupe.token", token);
const $ = (id) => document.getElementById(id);

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
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
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
        { "data-worker": w.id, ...(w.machine ? { "data-choice": `${w.machine}:${w.id}` } : {}) },
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
        // Slot ids ("slot.0") repeat across workers: a slot is its worker and its id.
        { "data-worker": s.workerId, "data-slot": s.id, "data-choice": `slot:${s.workerId}:${s.id}` },
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
        {
          "data-job": j.id,
          "data-status": j.status,
          ...(j.machine && (j.state || j.endedState) ? { "data-choice": `${j.machine}:${j.id}` } : {}),
        },
      ),
    ),
  );
  renderMachineChoices();
  showChosen();
}

/** A short name for a worker in the machine list: its agent and the start of its id. */
function workerLabel(workerId) {
  const worker = latest.workers.find((w) => w.id === workerId);
  const id = text(workerId);
  const short = id.length > 12 ? `${id.slice(0, 10)}…` : id;
  return worker?.agentName && !id.startsWith(worker.agentName) ? `${worker.agentName} ${short}` : short;
}

/** The machines that have a live instance now, as choices with a key unique on this page. */
function instances() {
  const out = [];
  for (const w of latest.workers)
    if (w.machine)
      out.push({
        key: `${w.machine}:${w.id}`,
        kind: w.machine,
        state: w.state,
        label: `${w.machine} ${w.id}`,
        actor: w.actor,
      });
  for (const s of latest.slots)
    out.push({
      key: `slot:${s.workerId}:${s.id}`,
      kind: "slot",
      state: s.state,
      label: `slot ${s.id} of ${workerLabel(s.workerId)}`,
      // A slot on the registry's page is a worker's report: its events are kept by that worker only.
      ...(s.actor ? { actor: s.actor } : { eventsElsewhere: "events for this actor are on its worker's page" }),
    });
  for (const j of latest.jobs) {
    if (!j.machine) continue;
    // A dispatch that has ended stays a choice while the registry keeps its events: its last state.
    if (j.state)
      out.push({
        key: `${j.machine}:${j.id}`,
        kind: j.machine,
        state: j.state,
        label: `${j.machine} ${j.id}`,
        actor: j.actor,
      });
    else if (j.endedState)
      out.push({
        key: `${j.machine}:${j.id}`,
        kind: j.machine,
        state: j.endedState,
        label: `${j.machine} ${j.id} (ended)`,
        actor: j.actor,
      });
  }
  return out;
}
function renderMachineChoices() {
  const select = $("machine");
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

/**
 * Marks the chosen machine's state in its diagram. A state string holds one full path per active
 * region ("active.lifecycle.running.available | active.pool.ready"); the diagram draws state
 * `<machine>.<path>` as a node titled `<machine>_<path with _>` and a compound state as a cluster
 * titled `cluster_<machine>_<path>`. Every active leaf is marked `current`, every compound state
 * that holds one `active`.
 */
async function renderDiagram() {
  const chosen = instances().find((c) => c.key === $("machine").value);
  const holder = $("diagram");
  $("machine-state").textContent = chosen ? chosen.state : "";
  if (!chosen) {
    delete holder.dataset.kind;
    return holder.replaceChildren();
  }
  const svg = await svgFor(chosen.kind);
  if (!svg) return holder.replaceChildren();
  if (holder.dataset.kind !== chosen.kind) {
    holder.innerHTML = svg;
    holder.dataset.kind = chosen.kind;
  }
  const id = (path) => `${chosen.kind}_${path.replaceAll(".", "_")}`;
  const leaves = new Set();
  const compounds = new Set();
  for (const path of chosen.state.split(" | ").map((p) => p.trim())) {
    if (!path) continue;
    leaves.add(id(path));
    const parts = path.split(".");
    for (let i = 1; i < parts.length; i++) compounds.add(`cluster_${id(parts.slice(0, i).join("."))}`);
  }
  let marked = 0;
  for (const node of holder.querySelectorAll("g.node")) {
    const on = leaves.has(node.querySelector("title")?.textContent ?? "");
    node.classList.toggle("current", on);
    if (on) marked++;
  }
  for (const cluster of holder.querySelectorAll("g.cluster"))
    cluster.classList.toggle("active", compounds.has(cluster.querySelector("title")?.textContent ?? ""));
  holder.dataset.marked = String(marked);
  if (holder.classList.contains("zoomed")) revealCurrent(holder);
}

/** At full size the diagram scrolls inside its box: bring the first current state into view. */
function revealCurrent(holder) {
  const node = holder.querySelector("g.node.current");
  if (!node) return;
  const box = holder.getBoundingClientRect();
  const at = node.getBoundingClientRect();
  if (at.left < box.left || at.right > box.right) holder.scrollLeft += at.left - box.left - (box.width - at.width) / 2;
  if (at.top < box.top || at.bottom > box.bottom) holder.scrollTop += at.top - box.top - (box.height - at.height) / 2;
}

/** The chosen machine's diagram and events, and its row in the tables marked. */
function showChosen() {
  const key = $("machine").value;
  for (const tr of document.querySelectorAll("tbody tr[data-choice]"))
    tr.classList.toggle("chosen", tr.getAttribute("data-choice") === key);
  renderDiagram().catch((error) => console.error("diagram", error));
  refreshEvents().catch((error) => console.error("events", error));
}

// ------------------------------------------------------------ the chosen actor's recent events

const EVENTS_POLL_MS = 1000;
/** What the panel shows now: an actor's list, or a note saying where its events are; null hides it. */
let eventsShown = null;
let eventsBusy = false;

/** The chosen machine's actor whose events this server keeps, or a note saying where they are instead. */
function chosenEvents() {
  const chosen = instances().find((c) => c.key === $("machine").value);
  if (chosen?.actor) return { key: `actor:${chosen.actor}`, actor: chosen.actor };
  if (chosen?.eventsElsewhere) return { key: `elsewhere:${chosen.key}`, actor: null, note: chosen.eventsElsewhere };
  return null;
}

const clockTime = (ms) => new Date(ms).toLocaleTimeString();

function renderEvents(actor, body, note, shown = Boolean(actor)) {
  const panel = $("actor-events");
  panel.hidden = !shown;
  panel.dataset.actor = actor ?? "";
  $("actor-events-note").textContent = note;
  const list = $("actor-events-list");
  const events = body?.events ?? [];
  // Newest first; event types and states only (neither server keeps payloads).
  list.replaceChildren(
    ...events
      .slice()
      .reverse()
      .map((e) => {
        const li = document.createElement("li");
        li.dataset.event = e.event;
        const head = document.createElement("div");
        const time = document.createElement("span");
        time.className = "muted";
        time.textContent = `${clockTime(e.at)} `;
        const type = document.createElement("span");
        type.className = "event";
        type.textContent = e.event;
        head.append(time, type);
        if (e.count > 1) head.append(` ×${e.count}`);
        const move = document.createElement("div");
        move.className = "transition";
        move.textContent = e.from === null ? `→ ${e.to}` : e.from === e.to ? `stays ${e.to}` : `${e.from} → ${e.to}`;
        li.append(head, move);
        return li;
      }),
  );
}

/** Fetches the chosen actor's recent events (skipped while a request is out) and shows them. */
async function refreshEvents() {
  const wanted = chosenEvents();
  const key = wanted?.key ?? null;
  const actor = wanted?.actor ?? null;
  if (key !== eventsShown) {
    eventsShown = key;
    renderEvents(actor, null, actor ? "loading…" : (wanted?.note ?? ""), Boolean(wanted));
  }
  if (!actor || eventsBusy) return;
  eventsBusy = true;
  try {
    const query = new URLSearchParams({ actor });
    if (token) query.set("token", token);
    const res = await fetch(`/dashboard/actor-events?${query}`, { cache: "no-store" });
    if (key !== eventsShown) return;
    if (res.ok) {
      const body = await res.json();
      renderEvents(actor, body, body.known === false ? "(none kept for it here)" : body.ended ? "(ended)" : "");
    } else {
      const said = (await res.json().catch(() => ({}))).error ?? `HTTP ${res.status}`;
      renderEvents(actor, null, said);
    }
  } catch {
    if (key === eventsShown) $("actor-events-note").textContent = "(not reachable; retrying)";
  } finally {
    eventsBusy = false;
  }
}
setInterval(() => {
  if (!document.hidden) refreshEvents().catch((error) => console.error("events", error));
}, EVENTS_POLL_MS);

$("machine").addEventListener("change", showChosen);
// A row of a table stands for its machine: pressing it shows that machine's diagram and events. The
// press, not the click: each snapshot renders the rows anew, and a browser fires no click when the
// row pressed was replaced before the button came up (a busy worker's rows change every second).
for (const table of ["workers", "slots", "jobs"]) {
  document.querySelector(`#${table} tbody`).addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    const key = event.target.closest("tr[data-choice]")?.getAttribute("data-choice");
    if (!key || !instances().some((c) => c.key === key)) return;
    $("machine").value = key;
    showChosen();
    $("machine-section").scrollIntoView({ block: "nearest" });
  });
}
// The diagram fits its box; a click shows it at full size (scrolling to the current state) and back.
$("diagram").addEventListener("click", () => {
  const holder = $("diagram");
  holder.classList.toggle("zoomed");
  if (holder.classList.contains("zoomed")) revealCurrent(holder);
});

function setSource(value) {
  $("source").textContent = value;
}
function showProblem(message) {
  const problem = $("problem");
  problem.textContent = message;
  problem.hidden = !message;
}
const eventsUrl = () => `/events${token ? `?token=${encodeURIComponent(token)}` : ""}`;

function connect() {
  const events = new EventSource(eventsUrl());
  events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  events.addEventListener("hello", (e) => {
    const hello = JSON.parse(e.data);
    setSource(hello.source);
    showProblem("");
    // Only the registry's playground can be opened from here; a local worker's needs its printed link.
    const link = $("playground-link");
    link.hidden = hello.playground !== "dispatch";
    link.href = `/playground${token ? `?token=${encodeURIComponent(token)}` : ""}`;
  });
  events.onerror = () => {
    setSource("reconnecting…");
    // While CONNECTING the browser retries by itself (the server is away). CLOSED means the server
    // answered but not with a stream: a refused token, which no retry fixes. Find out which.
    if (events.readyState === EventSource.CLOSED) {
      events.close();
      void diagnose();
    }
  };
}

/** Asks /events once more to read why it was refused; a refused token is said plainly, and stops. */
async function diagnose() {
  const abort = new AbortController();
  let status = 0;
  let error = "";
  try {
    const res = await fetch(eventsUrl(), { signal: abort.signal, cache: "no-store" });
    status = res.status;
    if (!res.ok) error = (await res.json().catch(() => ({}))).error ?? "";
  } catch {
    status = 0; // unreachable: try again below
  } finally {
    abort.abort();
  }
  if (status === 401 || status === 403) {
    sessionStorage.removeItem("troupe.token");
    setSource("not connected");
    showProblem(
      `${token ? "token not valid" : "no token"}: reload with ?token=<dispatcher token> ` +
        `(troupe token --role dispatcher mints one; troupe dev prints a link with one)${error ? `. The server said: ${error}` : ""}`,
    );
    return;
  }
  setTimeout(connect, 2000);
}
connect();
