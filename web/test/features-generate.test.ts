import { describe, expect, it } from "vitest";
import { Api } from "../src/lib/api";
import { fetchGeneration, withResponse } from "../src/lib/features";

describe("fetchGeneration", () => {
  it("POSTs the activations' body with the generation's options to the source's generate route", async () => {
    const seen: { url: string; method: string; body: unknown }[] = [];
    const api = new Api("http://x", async (url, init) => {
      seen.push({ url, method: init?.method ?? "GET", body: JSON.parse(String(init?.body)) });
      return new Response(JSON.stringify({ prompt_tokens: 3 }), { status: 200, headers: { "content-type": "application/json" } });
    });
    const body = { text: "hi<eot>", features: [4], rank: "activation" as const, top: 5, exclude_template: false, max_new_tokens: 8, temperature: 0, seed: null };
    expect(await fetchGeneration(api, "neurons:2", body)).toEqual({ prompt_tokens: 3 });
    expect(seen).toEqual([{ url: "http://x/api/features/neurons%3A2/generate", method: "POST", body }]);
  });
});

describe("withResponse (keep a generated response in the text box)", () => {
  it("continues plain text", () => {
    expect(withResponse("The capital of France is", " Paris.")).toBe("The capital of France is Paris.");
  });
  it("makes the response the assistant's turn after a user turn", () => {
    expect(withResponse("Hi<eot>Hello!<eot>Tell me a joke", "No.")).toBe("Hi<eot>Hello!<eot>Tell me a joke<eot>No.");
  });
  it("fills an assistant turn the prompt opened or began", () => {
    expect(withResponse("Hi<eot>", "Hello!")).toBe("Hi<eot>Hello!");
    expect(withResponse("Hi<eot>Hel", "lo!")).toBe("Hi<eot>Hello!");
  });
});
