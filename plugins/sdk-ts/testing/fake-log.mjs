import { current } from "./host.mjs";

export function write(level, message) {
  current().logs.push({ level, message });
}
