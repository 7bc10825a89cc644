import { DiminuendoClient } from "@diminuendo/client";
import WebSocket from "ws"; // Node 20 has no global WebSocket; in a browser leave it out

const client = new DiminuendoClient({ url: process.argv[2] ?? "ws://127.0.0.1:8080/ws", WebSocket });
await client.connect(); // dev mode; pass `token: jwt` otherwise
const session = await client.createSession({ agentType: "echo", name: "hello" });
const stream = client.session(session.id);
stream.on("event", (e) => {
  if (e.type === "text_delta") process.stdout.write(e.text);
  if (e.type === "turn_complete" || e.type === "turn_error") client.close();
});
await stream.join();
await client.runTurn(session.id, "Hello, agent!");
