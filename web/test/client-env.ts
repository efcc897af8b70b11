/**
 * A Node test environment whose modules are transformed for the client (Vite's "client" environment),
 * so svelte compiles runes in lib/*.svelte.ts for the browser and $effect actually runs. No DOM.
 */
import type { Environment } from "vitest/environments";

export default {
  name: "client-node",
  viteEnvironment: "client",
  setup() {
    return { teardown() {} };
  },
} satisfies Environment;
