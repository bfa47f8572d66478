// The playground: talk to an agent in a room over the same room protocol a JobContext uses.
//
// Two modes. "dispatch" (the registry's page): pick an agent and a room, get a participant token from
// the registry, join the room and dispatch the agent into it; once its job has ended, dispatch again.
// "join" (a local-mode worker's page, or any page opened with ?join=<participant token>): join the
// one room the link names with the token it carries; there is no registry and nothing to dispatch.
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const joinToken = params.get("join") ?? "";
const mode = joinToken ? "join" : document.body.dataset.mode === "join" ? "join" : "dispatch";
document.body.dataset.mode = mode;

const token = mode === "dispatch" ? (params.get("token") ?? sessionStorage.getItem("troupe.token") ?? "") : "";
if (token) sessionStorage.setItem("troupe.token", token);
if (token) $("dashboard-link").href = `/dashboard?token=${encodeURIComponent(token)}`;
$("room").value = params.get("room") ?? `room-${Math.random().toString(36).slice(2, 8)}`;
if (params.get("agent")) $("agent").value = params.get("agent");
if (params.get("name")) $("name").value = params.get("name");

const FINAL = new Set(["completed", "failed", "cancelled", "lost", "rejected"]);
/** Close codes the room hub uses beyond the standard ones. */
const CLOSE_REASONS = {
  4000: "the room ended",
  4001: "you joined this room again elsewhere (another tab, or troupe connect with the same token)",
  4002: "you were dropped: this page did not keep up with the room",
  4003: "the room filled up",
};

const state = {
  socket: undefined,
  /** The room the socket is in, once welcomed. */
  room: undefined,
  /** A request (token, dispatch) is in flight. */
  busy: false,
  /** The job this page dispatched, until it is final. */
  jobId: undefined,
  jobFinal: true,
  /** Bumped per dispatch so an older job's polling stops. */
  follow: 0,
};
const connected = () => state.socket !== undefined && state.room !== undefined;

function updateControls() {
  $("dispatch").disabled = state.busy || (connected() && !state.jobFinal);
  $("join").disabled = state.busy || state.socket !== undefined || !joinToken;
  $("leave").disabled = state.socket === undefined;
  $("message").disabled = !connected();
  $("send").disabled = !connected();
  $("room").readOnly = mode === "join" || state.socket !== undefined;
}

function showProblem(message) {
  $("problem").textContent = message;
  $("problem").hidden = !message;
}

const api = async (method, path, body) => {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const json = await res.json().catch(() => ({}));
  if (res.status === 401) {
    sessionStorage.removeItem("troupe.token");
    showProblem(
      `${token ? "token not valid" : "no token"}: reload with ?token=<dispatcher token> ` +
        `(troupe token --role dispatcher mints one; troupe dev prints a link with one)`,
    );
  }
  if (!res.ok) throw new Error(json.error ?? `${res.status}`);
  return json;
};

function log(text, kind) {
  const line = document.createElement("div");
  line.className = kind;
  line.textContent = text;
  $("log").append(line);
  $("log").scrollTop = $("log").scrollHeight;
}

const participants = new Map();
function showParticipants() {
  $("participants").textContent =
    `in the room: ${[...participants.values()].map((p) => `${p.name} (${p.kind})`).join(", ") || "nobody else"}`;
}

async function loadAgents() {
  try {
    const { workers } = await api("GET", "/v1/workers");
    const names = [...new Set(workers.map((w) => w.agentName))];
    $("agents").replaceChildren(...names.map((n) => new Option(n)));
    if (!$("agent").value && names[0]) $("agent").value = names[0];
  } catch (error) {
    $("status").textContent = `cannot list agents: ${error.message}`;
  }
}

/** Joins `room` with a participant token; resolves once the hub welcomed us. */
function joinRoom(room, participantToken) {
  const url = new URL(`/rooms/${encodeURIComponent(room)}`, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", participantToken);
  url.searchParams.set("name", $("name").value.trim() || "You");
  const socket = new WebSocket(url);
  state.socket = socket;
  updateControls();
  return new Promise((resolve, reject) => {
    let welcomed = false;
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "welcome" && !welcomed) {
        welcomed = true;
        state.room = frame.room;
        resolve();
      }
      onFrame(frame);
      updateControls();
    };
    socket.onclose = (event) => {
      if (state.socket === socket) {
        state.socket = undefined;
        state.room = undefined;
        participants.clear();
      }
      if (!welcomed) reject(new Error(`could not join the room${event.code === 1006 ? "" : ` (${event.code})`}`));
      else if (event.code === 1000 && event.reason === "left") log("you left the room", "system");
      else log(`disconnected: ${CLOSE_REASONS[event.code] ?? `connection closed (${event.code})`}`, "system");
      updateControls();
    };
  });
}

function leaveRoom() {
  const socket = state.socket;
  if (!socket) return;
  state.socket = undefined;
  state.room = undefined;
  participants.clear();
  showParticipants();
  if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "leave" }));
  socket.close(1000, "left");
}

/** The metadata field as an object, or undefined when empty; throws on anything but a JSON object. */
function metadata() {
  const raw = $("metadata").value.trim();
  if (!raw) return undefined;
  let value;
  try {
    value = JSON.parse(raw);
  } catch {
    throw new Error("metadata is not JSON");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw new Error("metadata must be a JSON object");
  return value;
}

$("dispatch").addEventListener("click", async () => {
  const room = $("room").value.trim();
  const agent = $("agent").value.trim();
  if (!room || !agent) {
    $("status").textContent = "needs an agent and a room";
    return;
  }
  let meta;
  try {
    meta = metadata();
  } catch (error) {
    $("status").textContent = `error: ${error.message}`;
    return;
  }
  state.busy = true;
  updateControls();
  try {
    // In a room already (the room field is locked then): dispatch into it again, same participant.
    if (!connected()) {
      const { token: participantToken } = await api("POST", `/v1/rooms/${encodeURIComponent(room)}/tokens`, {
        name: $("name").value.trim() || "You",
      });
      await joinRoom(room, participantToken);
    }
    const { job } = await api("POST", "/v1/jobs", {
      agent_name: agent,
      room_id: room,
      ...(meta ? { metadata: meta } : {}),
    });
    state.jobId = job.id;
    state.jobFinal = FINAL.has(job.status);
    $("status").textContent = `job ${job.id}: ${job.status}`;
    $("status").dataset.jobId = job.id;
    followJob(job.id);
  } catch (error) {
    $("status").textContent = `error: ${error.message}`;
  } finally {
    state.busy = false;
    updateControls();
  }
});

$("join").addEventListener("click", async () => {
  state.busy = true;
  updateControls();
  try {
    await joinRoom($("room").value.trim(), joinToken);
    $("status").textContent = `in room ${state.room}`;
  } catch (error) {
    $("status").textContent = `error: ${error.message}`;
  } finally {
    state.busy = false;
    updateControls();
  }
});

$("leave").addEventListener("click", () => {
  leaveRoom();
  updateControls();
  if (mode === "join") $("status").textContent = "left the room; join again while the agent is still there";
});

/** Shows the job's status as the registry records it, until it is final; then Dispatch is free again. */
function followJob(jobId) {
  const generation = ++state.follow;
  const poll = async () => {
    if (generation !== state.follow) return;
    try {
      const { job } = await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`);
      if (generation !== state.follow) return;
      $("status").textContent = `job ${job.id}: ${job.status}${job.reason ? ` (${job.reason})` : ""}`;
      $("status").dataset.jobStatus = job.status;
      if (FINAL.has(job.status)) {
        state.jobFinal = true;
        updateControls();
        return;
      }
    } catch (error) {
      $("status").textContent = `job ${jobId}: ${error.message}`;
    }
    setTimeout(poll, 1000);
  };
  void poll();
}

function onFrame(frame) {
  switch (frame.type) {
    case "welcome":
      $("room-title").textContent = frame.room;
      participants.clear();
      for (const p of frame.participants) participants.set(p.id, p);
      showParticipants();
      log(`you joined ${frame.room} as ${frame.you.name}`, "system");
      break;
    case "participant_joined":
      participants.set(frame.participant.id, frame.participant);
      showParticipants();
      log(`${frame.participant.name} joined`, "system");
      break;
    case "participant_left":
      participants.delete(frame.participant.id);
      showParticipants();
      log(`${frame.participant.name} left`, "system");
      break;
    case "message":
      log(
        `${frame.from.name}: ${frame.text ?? JSON.stringify(frame.data)}`,
        frame.from.kind === "agent" ? "agent" : "other",
      );
      break;
    case "room_ended":
      log(`the room ended (${frame.reason})`, "system");
      break;
    case "error":
      log(`error: ${frame.message}`, "system");
      break;
  }
}

$("chat").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value;
  const socket = state.socket;
  if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "message", text }));
  log(`${$("name").value.trim() || "You"}: ${text}`, "me");
  $("message").value = "";
});

if (mode === "join") {
  $("session-title").textContent = "Join the room";
  $("mode-note").textContent = "local room";
  if (!joinToken) {
    showProblem(
      "This playground joins the room of a local-mode worker: open the link the worker printed " +
        "(it carries the room's token).",
    );
  }
  $("name").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !$("join").disabled) $("join").click();
  });
  $("name").focus();
} else {
  void loadAgents();
}
updateControls();
