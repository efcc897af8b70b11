import { svelte } from "@sveltejs/vite-plugin-svelte";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const outDir = fileURLToPath(new URL("../src/lmpeek/static/app", import.meta.url));
// `LMPEEK_API=http://127.0.0.1:8765 npm run dev` proxies /api to a running `lmpeek serve`
const api = process.env.LMPEEK_API ?? "http://127.0.0.1:8765";

export default defineConfig({
  // relative asset URLs: the app can be served under any prefix
  base: "./",
  plugins: [svelte()],
  // tests run runes (lib/*.svelte.ts) client-side: the server build of svelte makes effects no-ops
  resolve: process.env.VITEST ? { conditions: ["browser"] } : undefined,
  build: {
    outDir,
    emptyOutDir: true,
    target: "es2022",
    rollupOptions: {
      // two entries: the page, and `lmpeek.js`, an ES module exporting render(el, data) with a stable
      // name so a notebook widget or an HTML export can load the same bundle
      input: { index: "index.html", lmpeek: "src/main.ts" },
      preserveEntrySignatures: "exports-only",
      output: { entryFileNames: "assets/[name].js", chunkFileNames: "assets/[name]-[hash].js" },
    },
  },
  server: { proxy: { "/api": { target: api, changeOrigin: true } } },
  test: { environment: "./test/client-env.ts", include: ["test/**/*.test.ts"] },
});
