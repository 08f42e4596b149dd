// Command presence-example joins a room, keeps the session alive and prints
// the room as it changes:
//
//	presence-example -addr localhost:50051 -room chat:42 -user alice
//
// It heartbeats every -interval, prints one line per room snapshot (the first
// at once, then one per join, leave or data change), and on exit (Ctrl-C, or
// after -snapshots N) disconnects its session so the others see it leave at
// once rather than at expiry.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	presencev1 "github.com/presenced/presenced/clients/go/presencev1"
)

type config struct {
	addr      string
	room      string
	user      string
	interval  time.Duration
	snapshots int // exit after this many snapshots; 0: never
}

func main() {
	var cfg config
	flag.StringVar(&cfg.addr, "addr", "localhost:50051", "presenced address (host:port)")
	flag.StringVar(&cfg.room, "room", "chat:42", "room id")
	flag.StringVar(&cfg.user, "user", "alice", "user id")
	flag.DurationVar(&cfg.interval, "interval", 10*time.Second, "heartbeat interval (1s..10m)")
	flag.IntVar(&cfg.snapshots, "snapshots", 0, "exit after this many snapshots (0: never)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run is the whole example; main and the test call it.
func run(ctx context.Context, cfg config, out io.Writer) error {
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// DialContext and WithBlock rather than grpc.NewClient (grpc-go 1.63+):
	// the example builds with every grpc-go from 1.33 on.
	conn, err := grpc.DialContext(dialCtx, cfg.addr, plaintext(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("dial %s: %w", cfg.addr, err)
	}
	defer conn.Close()
	client := presencev1.NewPresenceServiceClient(conn)

	heartbeat := &presencev1.HeartbeatRequest{
		RoomId:    cfg.room,
		UserId:    cfg.user,
		SessionId: newSessionID(), // one per process, like one per browser tab
		Interval:  durationpb.New(cfg.interval),
	}
	tokens, err := client.Heartbeat(ctx, heartbeat)
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	defer func() {
		// A fresh context: ctx may be cancelled (Ctrl-C) by now.
		byeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := client.Disconnect(byeCtx, &presencev1.DisconnectRequest{SessionToken: tokens.SessionToken}); err != nil {
			log.Printf("disconnect: %v", err)
		}
	}()

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go keepAlive(watchCtx, client, heartbeat, cfg.interval)

	stream, err := client.WatchRoom(watchCtx, &presencev1.WatchRoomRequest{RoomToken: tokens.RoomToken})
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	for seen := 0; cfg.snapshots == 0 || seen < cfg.snapshots; seen++ {
		update, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil // interrupted, or the server closed the stream
			}
			return fmt.Errorf("watch: %w", err)
		}
		fmt.Fprintln(out, describe(update.GetSnapshot()))
	}
	return nil
}

func keepAlive(ctx context.Context, client presencev1.PresenceServiceClient, req *presencev1.HeartbeatRequest, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if _, err := client.Heartbeat(ctx, req); err != nil && ctx.Err() == nil {
				log.Printf("heartbeat: %v", err)
			}
		}
	}
}

// describe renders a snapshot as one line; online users are marked with *.
func describe(s *presencev1.RoomSnapshot) string {
	users := make([]string, 0, len(s.GetUsers()))
	for _, u := range s.GetUsers() {
		if u.GetOnline() {
			users = append(users, u.GetUserId()+"*")
		} else {
			left := u.GetLastDisconnected().AsTime().Local().Format("15:04:05")
			users = append(users, fmt.Sprintf("%s (left %s)", u.GetUserId(), left))
		}
	}
	list := strings.Join(users, ", ")
	if list == "" {
		list = "(empty)"
	}
	return fmt.Sprintf("v%d %s: %d online of %d: %s", s.GetVersion(), s.GetRoomId(), s.GetOnlineCount(), s.GetTotalCount(), list)
}

// newSessionID returns a random (version 4) UUID.
func newSessionID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
