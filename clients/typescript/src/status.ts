import { formatLastSeen, type PresenceUser } from "./users.js";

/** "online", "last seen 5 minutes ago", or "offline" (left at an unknown time). */
export function presenceStatus(user: PresenceUser, now: Date = new Date(), locale = "en"): string {
  if (user.online) return "online";
  if (!user.lastDisconnected) return "offline";
  return `last seen ${formatLastSeen(user.lastDisconnected, now, locale)}`;
}

/** One line for a user: "ada (you): online", "alan: last seen 5 minutes ago". */
export function describeUser(user: PresenceUser, name: string, now: Date = new Date(), locale = "en"): string {
  return `${user.isSelf ? `${name} (you)` : name}: ${presenceStatus(user, now, locale)}`;
}
