import { current } from "./host.mjs";

export function settings() {
  return current().settings;
}

export function get(key) {
  const value = JSON.parse(current().settings)[key];
  return value === undefined ? undefined : typeof value === "string" ? value : JSON.stringify(value);
}
