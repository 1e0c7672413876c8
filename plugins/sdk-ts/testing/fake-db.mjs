import { current, failWith } from "./host.mjs";

export function execute(sql, params) {
  const host = current();
  host.calls.push({ sql, params });
  failWith(host);
  return host.changed;
}

export function query(sql, params) {
  const host = current();
  host.calls.push({ sql, params });
  failWith(host);
  return host.rows;
}
