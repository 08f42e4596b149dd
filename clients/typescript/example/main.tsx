// The example app: join a room, show who is here. In your own app import
// from "@presenced/client/react"; this one imports the sources directly.
//
// Query parameters (all optional):
//   user      your user id (default: a name remembered for this tab)
//   room      room id (default "lobby")
//   server    presenced's URL (default VITE_PRESENCED_URL, else port 50051 of this host)
//   interval  heartbeat interval in ms (default 5000)
//   hidden    "stay" keeps the session while the tab is hidden
//   strict    "0" renders without React StrictMode
//   share     "0" gives this tab its own streams instead of sharing the origin's
//   offline   offline avatars the FacePile shows at most (default 2)
//   max       avatars the FacePile shows at most (default 5)
//   theme     "light" or "dark" (default: the system's)
import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { tabHubFor } from "../src/index.js";
import { FacePile, presenceStatus, usePresence, type PresenceList } from "../src/react.js";

const params = new URLSearchParams(location.search);
const NAMES = ["ada", "grace", "alan", "edsger", "barbara", "donald", "margaret", "ken"];

function defaultUser(): string {
  const kept = sessionStorage.getItem("presenced-demo-user");
  if (kept) return kept;
  const name = `${NAMES[Math.floor(Math.random() * NAMES.length)]}-${Math.floor(Math.random() * 900 + 100)}`;
  sessionStorage.setItem("presenced-demo-user", name);
  return name;
}

const config = {
  server:
    params.get("server") ??
    (import.meta.env.VITE_PRESENCED_URL as string | undefined) ??
    `${location.protocol}//${location.hostname}:50051`,
  room: params.get("room") ?? "lobby",
  user: params.get("user") ?? defaultUser(),
  intervalMs: Number(params.get("interval") ?? 5000),
  disconnectWhenHidden: params.get("hidden") !== "stay",
  shareAcrossTabs: params.get("share") !== "0",
  maxOffline: Number(params.get("offline") ?? 2),
  max: Number(params.get("max") ?? 5),
  theme: (params.get("theme") ?? "auto") as "auto" | "light" | "dark",
};
document.documentElement.dataset.theme = config.theme;

/** What the end-to-end tests read: every list the page rendered, in order. */
interface DemoHistory {
  lists: { at: number; version: string; users: { userId: string; online: boolean }[] }[];
  errors: string[];
  /** This tab's part in sharing the origin's streams (null: not sharing). */
  sharing(): { tabId: string; leader: boolean; election: string; streams: number; polls: number } | null;
}
declare global {
  interface Window {
    presenceDemo: DemoHistory;
  }
}
window.presenceDemo = {
  lists: [],
  errors: [],
  sharing: () => {
    const hub = config.shareAcrossTabs ? tabHubFor(config.server.replace(/\/+$/, "")) : undefined;
    return hub ? { tabId: hub.tabId, leader: hub.isLeader, election: hub.election, streams: hub.streams, polls: hub.polls } : null;
  },
};

function record(users: PresenceList | undefined): void {
  if (!users) return;
  window.presenceDemo.lists.push({
    at: Date.now(),
    version: users.version.toString(),
    users: users.map((u) => ({ userId: u.userId, online: u.online })),
  });
}

function App() {
  const users = usePresence({
    baseUrl: config.server,
    roomId: config.room,
    userId: config.user,
    intervalMs: config.intervalMs,
    disconnectWhenHidden: config.disconnectWhenHidden,
    shareAcrossTabs: config.shareAcrossTabs,
    onError: (error, operation) => {
      window.presenceDemo.errors.push(`${operation}: ${String(error)}`);
    },
  });
  useEffect(() => record(users), [users]);
  // Re-render now and then so "last seen …" stays true.
  const [, tick] = useState(0);
  useEffect(() => {
    const timer = setInterval(() => tick((n) => n + 1), 30_000);
    return () => clearInterval(timer);
  }, []);

  const other = new URL(location.href);
  other.searchParams.set("user", `${NAMES[(NAMES.indexOf(config.user.split("-")[0]!) + 1) % NAMES.length]}`);

  return (
    <main>
      <h1>
        Room <code>{config.room}</code>
      </h1>
      <p className="sub">
        You are <strong id="me">{config.user}</strong>, on {config.server}
      </p>
      <div className="pile-row">
        <FacePile users={users} max={config.max} maxOffline={config.maxOffline} theme={config.theme} size={40} />
        <span className="counts" id="counts">
          {users ? `${users.onlineCount} online · ${users.totalCount} in the room` : "connecting…"}
        </span>
      </div>
      <ul className="members" id="members">
        {users?.map((user) => (
          <li key={user.userId} className={user.online ? "online" : "offline"} data-user-id={user.userId}>
            <span>{user.isSelf ? `${user.userId} (you)` : user.userId}</span>
            <span className="status">{presenceStatus(user)}</span>
          </li>
        ))}
      </ul>
      <p className="hint">
        Open <a href={other.toString()} target="_blank" rel="noreferrer">another user</a> in a new
        tab, then close it or switch away: this page shows it offline at once.
      </p>
    </main>
  );
}

const root = createRoot(document.getElementById("root")!);
root.render(
  params.get("strict") === "0" ? (
    <App />
  ) : (
    <StrictMode>
      <App />
    </StrictMode>
  ),
);
