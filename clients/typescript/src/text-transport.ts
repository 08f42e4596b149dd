/**
 * A unary-only grpc-web transport that needs nothing but `fetch` and
 * `response.text()`: requests and responses are `application/grpc-web-text`
 * (base64 of the usual grpc-web frames), which presenced (tonic-web) speaks on
 * its one port.
 *
 * It exists for React Native, whose `fetch` cannot stream a response body and
 * has no `ReadableStream`, which `@connectrpc/connect-web`'s transports need
 * even for unary calls. With it, Heartbeat, Disconnect and List work on any
 * `fetch`; a server stream (WatchRoom) does not, so a client on it polls List
 * (see `PresenceOptions.watch`). Binary bodies are avoided on purpose:
 * React Native's `fetch` handles strings everywhere, bytes not always.
 */
import { fromBinary, toBinary, type DescMessage, type DescMethodUnary, type MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport, type UnaryResponse } from "@connectrpc/connect";
import { validateResponse, validateTrailer } from "@connectrpc/connect/protocol-grpc-web";

export interface GrpcWebTextTransportOptions {
  /** Where presenced is, e.g. `http://127.0.0.1:50051`. */
  baseUrl: string;
  /** The fetch to use; default `globalThis.fetch`. Only `text()` of its responses is read. */
  fetch?: (input: string, init: RequestInit) => Promise<Pick<Response, "status" | "headers" | "text">>;
}

const CONTENT_TYPE = "application/grpc-web-text";

/** A unary-only grpc-web-text transport (see the module comment). */
export function createGrpcWebTextTransport(options: GrpcWebTextTransportOptions): Transport {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeadersInit | undefined,
      input: MessageInitShape<I>,
    ): Promise<UnaryResponse<I, O>> {
      const doFetch = options.fetch ?? globalThis.fetch;
      if (typeof doFetch !== "function") {
        throw new ConnectError("no fetch here: pass one as `fetch`", Code.Internal);
      }
      const requestHeader = new Headers(header);
      requestHeader.set("content-type", CONTENT_TYPE);
      requestHeader.set("accept", CONTENT_TYPE);
      requestHeader.set("x-grpc-web", "1");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const abort = new AbortController();
      const onAbort = () => abort.abort(signal?.reason);
      if (signal?.aborted) onAbort();
      signal?.addEventListener("abort", onAbort);
      if (timeoutMs !== undefined && timeoutMs > 0) {
        requestHeader.set("grpc-timeout", `${Math.ceil(timeoutMs)}m`);
        timer = setTimeout(() => abort.abort(new ConnectError("the deadline passed", Code.DeadlineExceeded)), timeoutMs);
      }
      const url = `${baseUrl}/${method.parent.typeName}/${method.name}`;
      try {
        const message = create(method.input, input);
        const body = base64Encode(frame(0, toBinary(method.input, message)));
        let response: Pick<Response, "status" | "headers" | "text">;
        let text: string;
        try {
          response = await doFetch(url, { method: "POST", headers: requestHeader, body, signal: abort.signal });
          text = await response.text();
        } catch (error) {
          if (abort.signal.aborted) {
            const reason: unknown = abort.signal.reason;
            throw reason instanceof ConnectError ? reason : new ConnectError("the call was cancelled", Code.Canceled);
          }
          throw new ConnectError(`fetch failed: ${String(error)}`, Code.Unavailable, undefined, undefined, error);
        }
        const responseHeader = new Headers(response.headers);
        const { foundStatus, headerError } = validateResponse(response.status, responseHeader);
        if (headerError) throw headerError;
        const trailer = new Headers();
        let output: Uint8Array | undefined;
        for (const f of frames(base64Decode(text))) {
          if (f.flags & 0x80) {
            parseTrailer(f.data, trailer);
          } else if (output === undefined) {
            output = f.data;
          } else {
            throw new ConnectError("protocol error: more than one message in a unary response", Code.Unimplemented);
          }
        }
        validateTrailer(foundStatus ? responseHeader : trailer, responseHeader);
        if (output === undefined) {
          throw new ConnectError("protocol error: no message in a unary response", Code.Unimplemented);
        }
        return {
          stream: false,
          service: method.parent,
          method,
          header: responseHeader,
          message: fromBinary(method.output, output),
          trailer,
        };
      } finally {
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      }
    },
    stream() {
      return Promise.reject(
        new ConnectError(
          "this transport has no server streams: watch with `watch: \"poll\"`, or give a streaming fetch",
          Code.Unimplemented,
        ),
      );
    },
  };
}

function frame(flags: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + data.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, data.length);
  out.set(data, 5);
  return out;
}

function* frames(bytes: Uint8Array): Generator<{ flags: number; data: Uint8Array }> {
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < 5) throw new ConnectError("protocol error: truncated frame header", Code.DataLoss);
    const flags = bytes[at]!;
    const length = new DataView(bytes.buffer, bytes.byteOffset + at + 1, 4).getUint32(0);
    if (bytes.length - at - 5 < length) throw new ConnectError("protocol error: truncated frame", Code.DataLoss);
    yield { flags, data: bytes.subarray(at + 5, at + 5 + length) };
    at += 5 + length;
  }
}

/** A grpc-web trailer frame: `name: value` lines, ASCII, CRLF-separated. */
function parseTrailer(data: Uint8Array, into: Headers): void {
  let text = "";
  for (const byte of data) text += String.fromCharCode(byte);
  for (const line of text.split("\r\n")) {
    const i = line.indexOf(":");
    if (i > 0) into.append(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const LOOKUP = new Map(Array.from(ALPHABET, (c, i) => [c, i] as const));

export function base64Encode(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const a = bytes[i]!;
    const b = bytes[i + 1];
    const c = bytes[i + 2];
    out += ALPHABET[a >> 2]!;
    out += ALPHABET[((a & 3) << 4) | ((b ?? 0) >> 4)]!;
    out += b === undefined ? "=" : ALPHABET[((b & 15) << 2) | ((c ?? 0) >> 6)]!;
    out += c === undefined ? "=" : ALPHABET[c & 63]!;
  }
  return out;
}

/**
 * Decodes base64, including several padded chunks one after another (a
 * grpc-web-text server may encode each frame on its own).
 */
export function base64Decode(text: string): Uint8Array {
  const out: number[] = [];
  let buffer = 0;
  let bits = 0;
  for (const ch of text) {
    if (ch === "=") {
      // The end of a chunk: drop the partial byte it padded.
      buffer = 0;
      bits = 0;
      continue;
    }
    const value = LOOKUP.get(ch);
    if (value === undefined) {
      if (ch === "\r" || ch === "\n" || ch === " ") continue;
      throw new ConnectError(`protocol error: not base64: ${JSON.stringify(ch)}`, Code.DataLoss);
    }
    buffer = (buffer << 6) | value;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((buffer >> bits) & 0xff);
      buffer &= (1 << bits) - 1;
    }
  }
  return Uint8Array.from(out);
}
