// The playground: create a room, dispatch an agent into it through the registry, and chat with it
// over the same room protocol a JobContext uses.
const params = new URLSearchParams(location.search);
const token = params.get("token") ?? sessionStorage.getItem("troupe.token") ?? "";
if (token) sessionStorage.setItem("troupe.token", token);
if (token) document.getElementById("dashboard-link").href = `/dashboard?token=${encodeURIComponent(token)}`;
const $ = (id) => document.getElementById(id);
$("room").value = params.get("room") ?? `room-${Math.random().toString(36).slice(2, 8)}`;
if (params.get("agent")) $("agent").value = params.get("agent");

const api = async (method, path, body) => {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const json = await res.json().catch(() => ({}));
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

let socket;
$("dispatch").addEventListener("click", async () => {
  const room = $("room").value.trim();
  const agent = $("agent").value.trim();
  if (!room || !agent) return;
  $("dispatch").disabled = true;
  try {
    const { token: participantToken } = await api("POST", `/v1/rooms/${encodeURIComponent(room)}/tokens`, {
      name: $("name").value || "You",
    });
    const url = new URL(`/rooms/${encodeURIComponent(room)}`, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", participantToken);
    url.searchParams.set("name", $("name").value || "You");
    socket = new WebSocket(url);
    socket.onmessage = (event) => onFrame(JSON.parse(event.data));
    socket.onclose = () => {
      log("disconnected", "system");
      $("message").disabled = true;
      $("send").disabled = true;
      $("dispatch").disabled = false;
    };
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = () => reject(new Error("could not join the room"));
    });
    const { job } = await api("POST", "/v1/jobs", { agent_name: agent, room_id: room });
    $("status").textContent = `job ${job.id}: ${job.status}`;
    $("status").dataset.jobId = job.id;
    followJob(job.id);
  } catch (error) {
    $("status").textContent = `error: ${error.message}`;
    $("dispatch").disabled = false;
  }
});

/** Shows the job's status as the registry records it, until it is final. */
function followJob(jobId) {
  const final = new Set(["completed", "failed", "cancelled", "lost", "rejected"]);
  const poll = async () => {
    try {
      const { job } = await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`);
      $("status").textContent = `job ${job.id}: ${job.status}${job.reason ? ` (${job.reason})` : ""}`;
      if (final.has(job.status)) return;
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
      $("message").disabled = false;
      $("send").disabled = false;
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
  if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "message", text }));
  log(`${$("name").value || "You"}: ${text}`, "me");
  $("message").value = "";
});

void loadAgents();
