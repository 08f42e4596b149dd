package main

// These tests run against a real presenced ($PRESENCED_BIN) on a free loopback
// port, started once in TestMain and stopped by PID afterwards.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	presencev1 "github.com/presenced/presenced/clients/go/presencev1"
)

var serverAddr string

func TestMain(m *testing.M) {
	bin := os.Getenv("PRESENCED_BIN")
	if bin == "" {
		fmt.Fprintln(os.Stderr, "PRESENCED_BIN must name a presenced binary (clients/go/test.sh sets it)")
		os.Exit(2)
	}
	server, exited, serverLog, err := startPresenced(bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	server.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		server.Process.Kill()
		<-exited
	}
	if strings.Contains(serverLog.String(), "panicked") {
		fmt.Fprintf(os.Stderr, "presenced panicked:\n%s", serverLog.String())
		code = 1
	}
	os.Exit(code)
}

// startPresenced starts bin on a free port (setting serverAddr) and waits
// until it listens. A start that exits first (the port was taken in the
// meantime) is retried on another port.
func startPresenced(bin string) (*exec.Cmd, chan struct{}, *bytes.Buffer, error) {
	for attempt := 0; attempt < 3; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			return nil, nil, nil, err
		}
		server := exec.Command(bin, "--listen", addr)
		var serverLog bytes.Buffer
		server.Stdout, server.Stderr = &serverLog, &serverLog
		if err := server.Start(); err != nil {
			return nil, nil, nil, err
		}
		exited := make(chan struct{})
		go func() { server.Wait(); close(exited) }()
		if waitListening(addr, exited, 30*time.Second) {
			serverAddr = addr
			return server, exited, &serverLog, nil
		}
		select {
		case <-exited:
			fmt.Fprintf(os.Stderr, "presenced on %s exited:\n%s", addr, serverLog.String())
			continue
		default:
			server.Process.Kill()
			<-exited
			return nil, nil, nil, fmt.Errorf("presenced did not listen on %s within 30 s:\n%s", addr, serverLog.String())
		}
	}
	return nil, nil, nil, errors.New("presenced did not start (3 attempts)")
}

// freeAddr returns a loopback address whose port was free a moment ago,
// below Linux's ephemeral range (32768 and up) so that no outgoing
// connection is given it before presenced binds it (scripts/lib.sh
// free_port does the same).
func freeAddr() (string, error) {
	rnd := mrand.New(mrand.NewSource(time.Now().UnixNano()))
	for i := 0; i < 1000; i++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 20000+rnd.Intn(12000)))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr, nil
	}
	return "", errors.New("no free port in 20000-31999 on 127.0.0.1")
}

// waitListening reports whether addr accepts connections before the server
// exits or the time is up.
func waitListening(addr string, exited <-chan struct{}, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond); err == nil {
			c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func dial(t *testing.T) presencev1.PresenceServiceClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, serverAddr, plaintext(), grpc.WithBlock())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return presencev1.NewPresenceServiceClient(conn)
}

func testRoom(t *testing.T) string { return "room:" + t.Name() + ":" + newSessionID() }

func join(t *testing.T, c presencev1.PresenceServiceClient, room, user string) *presencev1.HeartbeatResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Heartbeat(ctx, &presencev1.HeartbeatRequest{
		RoomId: room, UserId: user, SessionId: newSessionID(), Interval: durationpb.New(30 * time.Second),
	})
	if err != nil {
		t.Fatalf("heartbeat %s in %s: %v", user, room, err)
	}
	return resp
}

func users(s *presencev1.RoomSnapshot) string {
	var out []string
	for _, u := range s.GetUsers() {
		out = append(out, fmt.Sprintf("%s:%v", u.GetUserId(), u.GetOnline()))
	}
	return strings.Join(out, " ")
}

// TestStubs drives the generated stubs: heartbeat, list, a watch that sees a
// join and a leave, disconnect, and an error code.
func TestStubs(t *testing.T) {
	c := dial(t)
	room := testRoom(t)
	alice := join(t, c, room, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	list, err := c.List(ctx, &presencev1.ListRequest{RoomToken: alice.RoomToken})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if got := users(list.GetSnapshot()); got != "alice:true" {
		t.Fatalf("list: got %q, want alice online", got)
	}

	stream, err := c.WatchRoom(ctx, &presencev1.WatchRoomRequest{RoomToken: alice.RoomToken})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	next := func() *presencev1.RoomSnapshot {
		t.Helper()
		update, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch recv: %v", err)
		}
		return update.GetSnapshot()
	}
	until := func(want string) *presencev1.RoomSnapshot {
		t.Helper()
		for {
			if s := next(); users(s) == want {
				return s
			}
		}
	}
	first := next()
	if users(first) != "alice:true" {
		t.Fatalf("first snapshot: %q", users(first))
	}
	bob := join(t, c, room, "bob")
	joined := until("alice:true bob:true")
	if _, err := c.Disconnect(ctx, &presencev1.DisconnectRequest{SessionToken: bob.SessionToken}); err != nil {
		t.Fatalf("disconnect: %v", err)
	}
	left := until("alice:true bob:false")
	if left.GetOnlineCount() != 1 || left.GetTotalCount() != 2 || left.GetUsers()[1].GetLastDisconnected() == nil {
		t.Fatalf("after bob left: %v", left)
	}
	if !(first.GetVersion() < joined.GetVersion() && joined.GetVersion() < left.GetVersion()) {
		t.Fatalf("versions do not grow: %d %d %d", first.GetVersion(), joined.GetVersion(), left.GetVersion())
	}
	// Disconnect is idempotent.
	if _, err := c.Disconnect(ctx, &presencev1.DisconnectRequest{SessionToken: bob.SessionToken}); err != nil {
		t.Fatalf("second disconnect: %v", err)
	}

	_, err = c.Heartbeat(ctx, &presencev1.HeartbeatRequest{RoomId: room, UserId: "carol", SessionId: "s", Interval: durationpb.New(0)})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("zero interval: got %v, want InvalidArgument", err)
	}
}

// TestExample runs the example's run() against the server: it prints the
// room at once, then again when bob joins, and disconnects on the way out.
func TestExample(t *testing.T) {
	c := dial(t)
	room := testRoom(t)
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		errc <- run(ctx, config{addr: serverAddr, room: room, user: "alice", interval: 5 * time.Second, snapshots: 2}, pw)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	if !lines.Scan() || !strings.Contains(lines.Text(), room+": 1 online of 1: alice*") {
		t.Fatalf("first line: %q", lines.Text())
	}
	join(t, c, room, "bob")
	if !lines.Scan() || !strings.Contains(lines.Text(), room+": 2 online of 2: alice*, bob*") {
		t.Fatalf("second line: %q", lines.Text())
	}
	if err := <-errc; err != nil {
		t.Fatalf("run: %v", err)
	}
	snap, err := c.ListRoom(ctx, &presencev1.ListRoomRequest{RoomId: room})
	if err != nil {
		t.Fatalf("list room: %v", err)
	}
	if got := users(snap.GetSnapshot()); got != "bob:true alice:false" {
		t.Fatalf("after the example exited: %q, want bob online then alice offline", got)
	}
}

// TestExampleBinary builds the example command and runs it as a process, as
// a user would, then stops it with Ctrl-C: it must disconnect its session.
func TestExampleBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "presence-example")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	room := testRoom(t)
	cmd := exec.Command(bin, "-addr", serverAddr, "-room", room, "-user", "dora")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || !strings.Contains(lines.Text(), room+": 1 online of 1: dora*") {
		cmd.Process.Kill()
		t.Fatalf("presence-example printed %q (stderr: %s)", lines.Text(), stderr.String())
	}
	cmd.Process.Signal(os.Interrupt)
	for lines.Scan() {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("presence-example after Ctrl-C: %v\n%s", err, stderr.String())
	}
	c := dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	snap, err := c.ListRoom(ctx, &presencev1.ListRoomRequest{RoomId: room})
	if err != nil {
		t.Fatalf("list room: %v", err)
	}
	if got := users(snap.GetSnapshot()); got != "dora:false" {
		t.Fatalf("after Ctrl-C: %q, want dora offline (the example disconnects)", got)
	}
}
