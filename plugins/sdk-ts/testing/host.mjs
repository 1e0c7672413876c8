// The fake host behind the fake interfaces: records what the plugin sent
// and answers from what the test set. `const host = fakeHost()` installs
// a fresh one.
export function fakeHost() {
  const host = {
    calls: [],
    logs: [],
    /** An error variant the next calls fail with (`{tag: "unavailable", val: "down"}`), or undefined. */
    fail: undefined,
    rows: { columns: [], rows: [] },
    changed: 1n,
    settings: "{}",
  };
  globalThis.switchyardHost = host;
  return host;
}

export function current() {
  const host = globalThis.switchyardHost;
  if (host === undefined) throw new Error("no fake host: call fakeHost() first");
  return host;
}

/** What componentize-js throws for an `err` result. */
export function failWith(host) {
  if (host.fail !== undefined) throw { payload: host.fail };
}
