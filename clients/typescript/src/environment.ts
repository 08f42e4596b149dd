/**
 * The page lifecycle a presence client reacts to. In a browser it is the
 * window, document and navigator (see {@link browserEnvironment}); in Node
 * there is none; tests pass a fake.
 */
export interface PresenceEnvironment {
  /** Whether the page is visible now. */
  isVisible(): boolean;
  /** Calls `listener` on every visibility change; returns the unsubscriber. */
  onVisibilityChange(listener: () => void): () => void;
  /**
   * Calls `listener` on `pagehide` (the page is closed, navigated away from,
   * or put in the back/forward cache: then `persisted` is true). Never an
   * `unload` handler: that would keep the page out of the back/forward cache.
   */
  onPageHide(listener: (persisted: boolean) => void): () => void;
  /** Calls `listener` on `pageshow` (`persisted`: restored from the cache). */
  onPageShow(listener: (persisted: boolean) => void): () => void;
  /**
   * Queues a POST that survives the page going away (`navigator.sendBeacon`);
   * the body is sent as text/plain. Returns false when it could not queue it.
   */
  sendBeacon?(url: string, body: string): boolean;
}

/** The current page's lifecycle, or undefined outside a browser. */
export function browserEnvironment(): PresenceEnvironment | undefined {
  if (typeof window === "undefined" || typeof document === "undefined") {
    return undefined;
  }
  const listen = (
    target: Window | Document,
    type: string,
    listener: (event: Event) => void,
  ): (() => void) => {
    target.addEventListener(type, listener);
    return () => target.removeEventListener(type, listener);
  };
  const env: PresenceEnvironment = {
    isVisible: () => document.visibilityState !== "hidden",
    onVisibilityChange: (listener) => listen(document, "visibilitychange", () => listener()),
    onPageHide: (listener) => listen(window, "pagehide", (e) => listener((e as PageTransitionEvent).persisted)),
    onPageShow: (listener) => listen(window, "pageshow", (e) => listener((e as PageTransitionEvent).persisted)),
  };
  if (typeof navigator !== "undefined" && typeof navigator.sendBeacon === "function") {
    env.sendBeacon = (url, body) => navigator.sendBeacon(url, body);
  }
  return env;
}
