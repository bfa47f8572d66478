// Prints, as JSON, the URL of every module that importing process.argv[2] loads (run it with the
// loaders the module needs, e.g. `node --import tsx loaded-modules.mjs file:///…/src/index.ts`).
// A module hook sees every load; it runs on a thread of its own and reports each URL over a port.
import { register } from "node:module";
import { MessageChannel } from "node:worker_threads";

const hooks = `
let port;
export function initialize(data) { port = data.port; }
export async function load(url, context, nextLoad) { port.postMessage(url); return nextLoad(url, context); }
`;
// Loaded last: the port delivers in order, so once this arrives every earlier URL has too.
const END = "data:text/javascript,export default 'end of the list'";

const { port1, port2 } = new MessageChannel();
const loaded = [];
const ended = new Promise((resolve) => {
  port1.on("message", (url) => (url === END ? resolve() : loaded.push(url)));
});
register(`data:text/javascript,${encodeURIComponent(hooks)}`, { data: { port: port2 }, transferList: [port2] });
await import(process.argv[2]);
await import(END);
await ended;
port1.close();
process.stdout.write(JSON.stringify(loaded));
