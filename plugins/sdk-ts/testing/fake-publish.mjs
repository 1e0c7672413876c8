import { current, failWith } from "./host.mjs";

export function send(message) {
  const host = current();
  host.calls.push({ send: message });
  failWith(host);
}
