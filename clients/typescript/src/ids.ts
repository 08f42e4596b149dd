/**
 * Random session ids. `crypto.randomUUID` exists only in secure contexts
 * (https, or http on localhost), so a page served over plain http from an
 * intranet host has none; `crypto.getRandomValues` exists everywhere the Web
 * Crypto API does, and gives the same 122 random bits.
 */
export function randomUUID(): string {
  const c = globalThis.crypto as Crypto | undefined;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  if (typeof c?.getRandomValues !== "function") {
    throw new Error(
      "presence: no crypto.getRandomValues here; give a sessionId (on React Native, install expo-crypto)",
    );
  }
  return uuidFromBytes(c.getRandomValues(new Uint8Array(16)));
}

/** A version 4 UUID from 16 random bytes (RFC 9562 §5.4). */
export function uuidFromBytes(bytes: Uint8Array): string {
  if (bytes.length !== 16) throw new Error("uuidFromBytes: need 16 bytes");
  const b = Uint8Array.from(bytes);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
