import { vitePreprocess } from "@sveltejs/vite-plugin-svelte";

export default {
  preprocess: vitePreprocess(),
  // component styles travel inside the JS bundle and are injected where the app is mounted
  // (document head, or the shadow root of a notebook widget): one file holds everything
  compilerOptions: { css: "injected" },
};
