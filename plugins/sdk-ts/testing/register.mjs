// `node --import plugins/sdk-ts/testing/register.mjs`: the host's
// interfaces (`switchyard:plugin/db@0.1.0`, ...) resolve to the fakes in
// this directory, so tests run plugin and SDK code under Node.
import { register } from "node:module";

register("./loader.mjs", import.meta.url);
