// Module resolution hook (see register.mjs).
export async function resolve(specifier, context, next) {
  const m = /^switchyard:plugin\/([a-z]+)@0\.1\.0$/.exec(specifier);
  if (m) return { url: new URL(`./fake-${m[1]}.mjs`, import.meta.url).href, shortCircuit: true };
  return next(specifier, context);
}
