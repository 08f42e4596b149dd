// Session ids without crypto.randomUUID, and the base64 of the grpc-web-text
// transport (its calls are tested against a real presenced under Jest).
import { afterEach, describe, expect, it, vi } from "vitest";
import { randomUUID, uuidFromBytes } from "../../src/ids.js";
import { base64Decode, base64Encode } from "../../src/text-transport.js";

const V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("randomUUID", () => {
  it("uses crypto.randomUUID where there is one", () => {
    vi.stubGlobal("crypto", { randomUUID: () => "from-randomUUID", getRandomValues: () => new Uint8Array(16) });
    expect(randomUUID()).toBe("from-randomUUID");
  });

  it("makes a version 4 UUID from getRandomValues where randomUUID is missing (not a secure context)", () => {
    const real = globalThis.crypto;
    vi.stubGlobal("crypto", { getRandomValues: (a: Uint8Array) => real.getRandomValues(a) });
    const ids = Array.from({ length: 100 }, () => randomUUID());
    for (const id of ids) expect(id).toMatch(V4);
    expect(new Set(ids).size).toBe(100);
  });

  it("says what to do when there is no Web Crypto at all", () => {
    vi.stubGlobal("crypto", undefined);
    expect(() => randomUUID()).toThrow(/give a sessionId/);
  });

  it("sets the version and variant bits and keeps the rest", () => {
    expect(uuidFromBytes(new Uint8Array(16).fill(0xff))).toBe("ffffffff-ffff-4fff-bfff-ffffffffffff");
    expect(uuidFromBytes(new Uint8Array(16))).toBe("00000000-0000-4000-8000-000000000000");
    expect(() => uuidFromBytes(new Uint8Array(15))).toThrow(/16 bytes/);
  });
});

describe("base64 of grpc-web-text", () => {
  it("round-trips every length, and matches Node's encoding", () => {
    for (let n = 0; n < 40; n++) {
      const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) & 0xff);
      const text = base64Encode(bytes);
      expect(text).toBe(Buffer.from(bytes).toString("base64"));
      expect(base64Decode(text)).toEqual(bytes);
    }
  });

  it("decodes padded chunks one after another (one per frame)", () => {
    const a = Uint8Array.of(0, 0, 0, 0, 2, 42, 7); // 7 bytes: its base64 ends in "=="
    const b = Uint8Array.of(0x80, 0, 0, 0, 0x0d);
    const text = Buffer.from(a).toString("base64") + Buffer.from(b).toString("base64");
    expect(text.indexOf("=")).toBe(10); // padding in the middle, not only at the end
    expect([...base64Decode(text)]).toEqual([...a, ...b]);
  });

  it("refuses what is not base64", () => {
    expect(() => base64Decode("AAA*")).toThrow(/not base64/);
  });
});
