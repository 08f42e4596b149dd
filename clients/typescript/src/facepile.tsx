/**
 * FacePile: who is here, as overlapping avatars.
 *
 * Online users come first, in colour with a filled green dot; offline users
 * (only as many as `maxOffline`, default none) follow after a small gap,
 * opaque in a muted tone with a hollow dot, so overlaps never turn muddy.
 * "+N" counts what it says: by default the online users not shown ("+7",
 * labelled "7 more online"). Each avatar is focusable and has a tooltip with
 * the name and "online" / "last seen 5 minutes ago" (its accessible
 * description), shown on hover and keyboard focus, dismissed with Escape.
 *
 * Styling is a stylesheet of class names and CSS variables (`FACEPILE_CSS`,
 * injected once unless `injectStyles={false}`), wrapped in `:where()` so any
 * rule of the app wins. Dark mode follows `prefers-color-scheme` (`theme`
 * "auto") or is forced with `theme="dark"` / `"light"`.
 */
import { useEffect, useId, useInsertionEffect, useState, type CSSProperties, type ReactElement } from "react";
import { presenceStatus } from "./status.js";
import type { PresenceList, PresenceUser } from "./users.js";

export interface FacePileProps {
  /** The users to show, e.g. from `usePresence`; undefined while loading. */
  users: readonly PresenceUser[] | undefined;
  /** Users in the room in all; default: the list's `totalCount`, else its length. */
  totalCount?: number;
  /** Users online in the room; default: the list's `onlineCount`, else those listed online. */
  onlineCount?: number;
  /** Avatars shown at most, online and offline together; default 5. */
  max?: number;
  /**
   * Offline avatars shown at most, after the online ones and only in slots
   * they leave free; default 0 (online users only).
   */
  maxOffline?: number;
  /** Only offline users who left within this many milliseconds are shown; default: any. */
  offlineWithinMs?: number;
  /**
   * What "+N" counts: `"online"` (default) the online users not shown;
   * `"all"` every user not shown, online or not.
   */
  overflow?: "online" | "all";
  /** Avatar diameter in pixels; default: `--presenced-size` (36px). */
  size?: number;
  /** `"auto"` (default) follows the system's colour scheme; or force `"light"` / `"dark"`. */
  theme?: "auto" | "light" | "dark";
  /** Display name; default: `data.name` when it is a string, else the user id. */
  getName?: (user: PresenceUser) => string;
  /** Picture URL; default: `data.avatarUrl` when it is a string, else initials. */
  getImageUrl?: (user: PresenceUser) => string | undefined;
  /** Locale of "last seen …"; default "en". */
  locale?: string;
  /** Put `FACEPILE_CSS` in the document (once); default true. Turn off to ship it in your own CSS. */
  injectStyles?: boolean;
  className?: string;
  style?: CSSProperties;
}

/**
 * The FacePile's stylesheet. Every rule is inside `:where()` (specificity
 * zero), so the app's own rules override it. Theme with the variables:
 * `--presenced-size`, `--presenced-surface` (the ring around each avatar:
 * set it to the background behind the pile), `--presenced-online`,
 * `--presenced-offline-bg`, `--presenced-offline-fg`, `--presenced-more-bg`,
 * `--presenced-more-fg`, `--presenced-tooltip-bg`, `--presenced-tooltip-fg`,
 * `--presenced-focus`, `--presenced-font`.
 */
export const FACEPILE_CSS = `
:where(.presenced-facepile) {
  --presenced-size: 36px;
  --presenced-surface: #ffffff;
  --presenced-online: #16a34a;
  --presenced-offline-bg: #e2e8f0;
  --presenced-offline-fg: #64748b;
  --presenced-more-bg: #f1f5f9;
  --presenced-more-fg: #334155;
  --presenced-tooltip-bg: #0f172a;
  --presenced-tooltip-fg: #f8fafc;
  --presenced-tooltip-muted: #cbd5e1;
  --presenced-focus: #2563eb;
  --presenced-font: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  display: inline-flex;
  align-items: center;
  min-height: var(--presenced-size);
  padding: 2px;
  font-family: var(--presenced-font);
  line-height: 1;
}
:where(.presenced-facepile[data-theme="dark"]) {
  --presenced-surface: #0f172a;
  --presenced-online: #22c55e;
  --presenced-offline-bg: #334155;
  --presenced-offline-fg: #94a3b8;
  --presenced-more-bg: #1e293b;
  --presenced-more-fg: #e2e8f0;
  --presenced-tooltip-bg: #f8fafc;
  --presenced-tooltip-fg: #0f172a;
  --presenced-tooltip-muted: #475569;
  --presenced-focus: #60a5fa;
}
@media (prefers-color-scheme: dark) {
  :where(.presenced-facepile[data-theme="auto"]) {
    --presenced-surface: #0f172a;
    --presenced-online: #22c55e;
    --presenced-offline-bg: #334155;
    --presenced-offline-fg: #94a3b8;
    --presenced-more-bg: #1e293b;
    --presenced-more-fg: #e2e8f0;
    --presenced-tooltip-bg: #f8fafc;
    --presenced-tooltip-fg: #0f172a;
    --presenced-tooltip-muted: #475569;
    --presenced-focus: #60a5fa;
  }
}
:where(.presenced-avatar, .presenced-more) {
  box-sizing: border-box;
  flex: none;
  position: relative;
  display: inline-flex;
  align-items: center;
  justify-content: center;
  height: var(--presenced-size);
  min-width: var(--presenced-size);
  margin-left: calc(var(--presenced-size) / -4);
  border-radius: calc(var(--presenced-size) / 2);
  box-shadow: 0 0 0 2px var(--presenced-surface);
  font-size: calc(var(--presenced-size) * 0.38);
  font-weight: 600;
  user-select: none;
  outline: none;
}
:where(.presenced-avatar:first-child, .presenced-more:first-child) { margin-left: 0; }
:where(.presenced-avatar) {
  width: var(--presenced-size);
  background: var(--presenced-avatar-bg, #64748b);
  color: #ffffff;
}
:where(.presenced-avatar[data-online="false"]) {
  background: var(--presenced-offline-bg);
  color: var(--presenced-offline-fg);
}
:where(.presenced-avatar[data-first-offline]) { margin-left: calc(var(--presenced-size) / 5); }
:where(.presenced-avatar img) {
  width: 100%;
  height: 100%;
  border-radius: 50%;
  object-fit: cover;
}
:where(.presenced-avatar[data-online="false"] img) { filter: grayscale(1) contrast(0.8); }
:where(.presenced-dot) {
  position: absolute;
  right: -1px;
  bottom: -1px;
  box-sizing: border-box;
  width: 32%;
  height: 32%;
  border-radius: 50%;
  background: var(--presenced-online);
  box-shadow: 0 0 0 2px var(--presenced-surface);
}
:where(.presenced-avatar[data-online="false"] .presenced-dot) {
  background: var(--presenced-surface);
  border: 2px solid var(--presenced-offline-fg);
}
:where(.presenced-more) {
  padding: 0 calc(var(--presenced-size) / 5);
  background: var(--presenced-more-bg);
  color: var(--presenced-more-fg);
  font-size: calc(var(--presenced-size) * 0.33);
}
:where(.presenced-avatar, .presenced-more):where(:hover, :focus-visible) { z-index: 100 !important; }
:where(.presenced-avatar, .presenced-more):focus-visible {
  box-shadow: 0 0 0 2px var(--presenced-surface), 0 0 0 4px var(--presenced-focus);
}
:where(.presenced-tooltip) {
  position: absolute;
  top: calc(100% + 8px);
  left: 50%;
  transform: translateX(-50%);
  display: flex;
  flex-direction: column;
  gap: 3px;
  padding: 6px 9px;
  border-radius: 6px;
  background: var(--presenced-tooltip-bg);
  color: var(--presenced-tooltip-fg);
  font-size: 12px;
  font-weight: 600;
  white-space: nowrap;
  pointer-events: none;
  box-shadow: 0 4px 12px rgb(0 0 0 / 0.18);
  opacity: 0;
  visibility: hidden;
  transition: opacity 120ms ease-out, visibility 120ms;
}
:where(.presenced-tooltip-status) { font-weight: 400; color: var(--presenced-tooltip-muted); }
:where(.presenced-avatar, .presenced-more):where(:hover, :focus-visible):not([data-tooltip-dismissed]) > :where(.presenced-tooltip) {
  opacity: 1;
  visibility: visible;
}
@media (prefers-reduced-motion: reduce) {
  :where(.presenced-tooltip) { transition: none; }
}
`;

const STYLE_ID = "presenced-facepile-styles";

function useFacePileStyles(enabled: boolean): void {
  useInsertionEffect(() => {
    if (!enabled || typeof document === "undefined" || document.getElementById(STYLE_ID)) return;
    const style = document.createElement("style");
    style.id = STYLE_ID;
    style.textContent = FACEPILE_CSS;
    document.head.prepend(style); // first, so the app's stylesheets come after it
  }, [enabled]);
}

function defaultName(user: PresenceUser): string {
  const name = user.data?.["name"];
  return typeof name === "string" && name !== "" ? name : user.userId;
}

function defaultImageUrl(user: PresenceUser): string | undefined {
  const url = user.data?.["avatarUrl"];
  return typeof url === "string" && url !== "" ? url : undefined;
}

function initials(name: string): string {
  const words = name.split(/[\s._@-]+/).filter((w) => w !== "");
  const letters = words.length > 1 ? [words[0]!, words[1]!] : [name];
  return letters
    .map((w) => Array.from(w)[0] ?? "")
    .join("")
    .toUpperCase();
}

/** A stable colour per user id, so a face keeps its colour everywhere (white text reads on all). */
function colourOf(id: string): string {
  let hash = 0;
  for (let i = 0; i < id.length; i++) {
    hash = (Math.imul(hash, 31) + id.charCodeAt(i)) | 0;
  }
  return `hsl(${Math.abs(hash) % 360} 60% 40%)`;
}

/** Re-renders every `periodMs` while `enabled`, for relative times. */
function useNow(periodMs: number, enabled: boolean): Date {
  const [now, setNow] = useState(() => new Date());
  useEffect(() => {
    if (!enabled) return;
    setNow(new Date());
    const timer = setInterval(() => setNow(new Date()), periodMs);
    return () => clearInterval(timer);
  }, [periodMs, enabled]);
  return now;
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** See the module comment. */
export function FacePile({
  users,
  totalCount,
  onlineCount,
  max = 5,
  maxOffline = 0,
  offlineWithinMs,
  overflow = "online",
  size,
  theme = "auto",
  getName = defaultName,
  getImageUrl = defaultImageUrl,
  locale = "en",
  injectStyles = true,
  className,
  style,
}: FacePileProps): ReactElement {
  useFacePileStyles(injectStyles);
  const id = useId();
  const [dismissed, setDismissed] = useState<string | undefined>();
  const list = users as Partial<PresenceList> | undefined;
  const hasOffline = users?.some((u) => !u.online) ?? false;
  const now = useNow(30_000, hasOffline && maxOffline > 0);

  const slots = Math.max(0, max);
  const online = users?.filter((u) => u.online) ?? [];
  const shownOnline = online.slice(0, slots);
  const recent = (u: PresenceUser) =>
    offlineWithinMs === undefined ||
    (u.lastDisconnected !== undefined && now.getTime() - u.lastDisconnected.getTime() <= offlineWithinMs);
  const shownOffline = (users ?? [])
    .filter((u) => !u.online && recent(u))
    .slice(0, Math.max(0, Math.min(maxOffline, slots - shownOnline.length)));
  const shown = [...shownOnline, ...shownOffline];

  const total = totalCount ?? list?.totalCount ?? users?.length ?? 0;
  const onlineTotal = onlineCount ?? list?.onlineCount ?? online.length;
  const hiddenOnline = Math.max(0, onlineTotal - shownOnline.length);
  const hiddenOffline = Math.max(0, total - onlineTotal - shownOffline.length);
  const more = overflow === "all" ? hiddenOnline + hiddenOffline : hiddenOnline;
  const moreLabel =
    overflow === "all"
      ? `${more} more: ${hiddenOnline} online, ${hiddenOffline} offline`
      : `${more} more online`;
  const label = users
    ? `${plural(onlineTotal, "person", "people")} online` + (total > onlineTotal ? `, ${total - onlineTotal} offline` : "")
    : "loading presence";

  const tooltipProps = (key: string) => ({
    "data-tooltip-dismissed": dismissed === key ? "" : undefined,
    onKeyDown: (e: { key: string }) => {
      if (e.key === "Escape") setDismissed(key);
    },
    onBlur: () => setDismissed(undefined),
    onMouseLeave: () => setDismissed(undefined),
  });

  return (
    <div
      role="list"
      aria-label={label}
      aria-busy={users === undefined}
      data-theme={theme}
      className={className ? `presenced-facepile ${className}` : "presenced-facepile"}
      style={(size === undefined ? style : { "--presenced-size": `${size}px`, ...style }) as CSSProperties | undefined}
    >
      {shown.map((user, i) => {
        const name = user.isSelf ? `${getName(user)} (you)` : getName(user);
        const status = presenceStatus(user, now, locale);
        const image = getImageUrl(user);
        const tip = `${id}-${i}`;
        return (
          <div
            key={user.userId}
            role="listitem"
            tabIndex={0}
            className="presenced-avatar"
            data-user-id={user.userId}
            data-online={user.online ? "true" : "false"}
            data-first-offline={!user.online && i === shownOnline.length && i > 0 ? "" : undefined}
            aria-label={name}
            aria-describedby={tip}
            style={{ zIndex: shown.length - i, "--presenced-avatar-bg": colourOf(user.userId) } as CSSProperties}
            {...tooltipProps(user.userId)}
          >
            {image ? <img src={image} alt="" /> : <span aria-hidden="true">{initials(getName(user))}</span>}
            <span className="presenced-dot" aria-hidden="true" />
            <span className="presenced-tooltip" role="tooltip">
              <span className="presenced-tooltip-name" aria-hidden="true">
                {name}
              </span>
              <span className="presenced-tooltip-status" id={tip}>
                {status}
              </span>
            </span>
          </div>
        );
      })}
      {more > 0 ? (
        <div
          role="listitem"
          tabIndex={0}
          className="presenced-more"
          data-counts={overflow}
          aria-label={moreLabel}
          {...tooltipProps("+")}
        >
          <span aria-hidden="true">+{more}</span>
          <span className="presenced-tooltip" aria-hidden="true">
            <span className="presenced-tooltip-name">{moreLabel}</span>
          </span>
        </div>
      ) : null}
    </div>
  );
}
