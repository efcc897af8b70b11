import { svelte } from "@sveltejs/vite-plugin-svelte";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The same app as one self-contained ES module: `render(el, {source})` and nothing else to load.
// Component styles are injected by the module itself (svelte.config.js: css "injected"), every import
// is inlined, so a notebook widget or an exported HTML file needs this one file and no network.
const outDir = fileURLToPath(new URL("../src/lmpeek/static/app/embed", import.meta.url));

export default defineConfig({
  plugins: [svelte()],
  build: {
    outDir,
    emptyOutDir: true,
    target: "es2022",
    lib: { entry: "src/main.ts", formats: ["es"], fileName: () => "lmpeek.js" },
    minify: true,
    rollupOptions: { output: { inlineDynamicImports: true } },
    copyPublicDir: false,
  },
});
