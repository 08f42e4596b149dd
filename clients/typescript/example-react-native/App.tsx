// The presenced example for React Native (Expo): join a room, show who is
// here, with "last seen" for those who left. Put the app in the background:
// other devices show you offline at once, and online again when you return.
//
// The snapshots come over a WatchRoom stream through expo/fetch (which can
// stream response bodies). Take the `fetch` line out and the client polls
// List instead, every 3 s, over React Native's own fetch.
import { useState } from "react";
import { fetch } from "expo/fetch";
import { FlatList, StyleSheet, Switch, Text, View, useColorScheme } from "react-native";
import { presenceStatus, usePresence, type PresenceUser } from "@presenced/client/react-native";

// Where presenced is. The Android emulator reaches the computer it runs on at
// 10.0.2.2; a phone needs the computer's address on the network, and a
// presenced that listens there (see the README next to this file).
const SERVER = process.env.EXPO_PUBLIC_PRESENCED_URL ?? "http://10.0.2.2:50051";
const ROOM = "lobby";
const ME = `phone-${Math.floor(Math.random() * 900 + 100)}`;

export default function App() {
  const [stayInBackground, setStayInBackground] = useState(false);
  const users = usePresence({
    baseUrl: SERVER,
    roomId: ROOM,
    userId: ME,
    fetch,
    disconnectWhenHidden: !stayInBackground,
    onError: (error, operation) => console.warn(`presence ${operation}: ${String(error)}`),
  });
  const dark = useColorScheme() === "dark";
  const colours = dark ? darkColours : lightColours;

  return (
    <View style={[styles.screen, { backgroundColor: colours.background }]}>
      <Text style={[styles.title, { color: colours.text }]}>Room {ROOM}</Text>
      <Text style={[styles.sub, { color: colours.muted }]}>
        {users ? `${users.onlineCount} online · ${users.totalCount} in the room` : `connecting to ${SERVER}…`}
      </Text>
      <FlatList
        data={users ?? []}
        keyExtractor={(user) => user.userId}
        renderItem={({ item }) => <Row user={item} colours={colours} />}
      />
      <View style={styles.option}>
        <Text style={{ color: colours.text }}>Stay online in the background</Text>
        <Switch value={stayInBackground} onValueChange={setStayInBackground} />
      </View>
    </View>
  );
}

function Row({ user, colours }: { user: PresenceUser; colours: typeof lightColours }) {
  return (
    <View style={[styles.row, { borderColor: colours.border }]}>
      <View style={[styles.dot, user.online ? { backgroundColor: colours.online } : { borderColor: colours.muted, borderWidth: 2 }]} />
      <Text style={[styles.name, { color: user.online ? colours.text : colours.muted }]}>
        {user.isSelf ? `${user.userId} (you)` : user.userId}
      </Text>
      <Text style={{ color: user.online ? colours.online : colours.muted }}>{presenceStatus(user)}</Text>
    </View>
  );
}

const lightColours = { background: "#ffffff", text: "#0f172a", muted: "#64748b", border: "#e2e8f0", online: "#16a34a" };
const darkColours = { background: "#0f172a", text: "#e2e8f0", muted: "#94a3b8", border: "#1e293b", online: "#22c55e" };

const styles = StyleSheet.create({
  screen: { flex: 1, paddingTop: 64, paddingHorizontal: 20 },
  title: { fontSize: 22, fontWeight: "600" },
  sub: { fontSize: 14, marginTop: 4, marginBottom: 16 },
  row: { flexDirection: "row", alignItems: "center", paddingVertical: 12, borderBottomWidth: StyleSheet.hairlineWidth },
  dot: { width: 10, height: 10, borderRadius: 5, marginRight: 10 },
  name: { flex: 1, fontSize: 16 },
  option: { flexDirection: "row", alignItems: "center", justifyContent: "space-between", paddingVertical: 16 },
});
