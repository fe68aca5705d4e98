// Package testenv starts the real dependencies integration tests need: an
// embedded nats-server with JetStream on a free port, and a redis-server
// process on a unix socket with a per-test key prefix. Nothing is mocked.
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/shanenoi/otariinae/pkg/bus"
)

// NATS is an embedded JetStream server for one test.
type NATS struct {
	Server *server.Server
	URL    string
	dir    string
}

// StartNATS starts an embedded nats-server with JetStream on 127.0.0.1 and a
// free port, stopped when the test ends.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	n := &NATS{dir: t.TempDir()}
	n.start(t, -1)
	t.Cleanup(n.Shutdown)
	return n
}

func (n *NATS) start(t testing.TB, port int) {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: n.dir,
		NoSigs: true, NoLog: true, MaxPayload: 32 << 20,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready in 10s")
	}
	n.Server = s
	n.URL = s.ClientURL()
}

// Shutdown stops the server (idempotent).
func (n *NATS) Shutdown() {
	if n.Server != nil {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
	}
}

// Restart starts the server again on the same port and store directory,
// whether or not Shutdown was called first. The port comes from URL, which
// outlives the server (a stopped server has no listener address).
func (n *NATS) Restart(t testing.TB) {
	t.Helper()
	i := strings.LastIndexByte(n.URL, ':')
	pn, err := strconv.Atoi(n.URL[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("nats restart: no port in %q", n.URL)
	}
	n.Shutdown()
	n.start(t, pn)
}

// Conn returns a connection closed when the test ends.
func (n *NATS) Conn(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context with every otariinae stream created.
func (n *NATS) JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(n.Conn(t))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return js
}

// Redis is a redis-server process for one test.
type Redis struct {
	Client *redis.Client
	Prefix string
	Socket string
	URL    string
	cmd    *exec.Cmd
}

var prefixSeq atomic.Int64

// StartRedis spawns redis-server on a unix socket in a temp dir, with no
// persistence, and returns a client and a key prefix unique to this test.
// It fails the test with install instructions if redis-server is missing.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found on PATH: run `make deps` (apt-get install redis-server) or install Redis 7 yourself")
	}
	dir, err := os.MkdirTemp("", "otariinae-redis-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "redis.sock")
	var out bytes.Buffer
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r := &Redis{Socket: sock, cmd: cmd, URL: "unix://" + sock}
	r.Prefix = fmt.Sprintf("t%d-%d:", os.Getpid(), prefixSeq.Add(1))
	r.Client = redis.NewClient(&redis.Options{Network: "unix", Addr: sock})
	t.Cleanup(func() {
		_ = r.Client.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := r.Client.Ping(ctx).Err()
		cancel()
		if err == nil {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not answer PING in 10s: %v\n%s", err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Logger returns a slog.Logger that writes to t.Log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Eventually polls cond every 20ms until it returns true or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RedisCPU is the CPU time (user and system) redis-server behind rdb has
// spent so far, as its INFO reports it (to the µs). Benchmarks take the
// difference across a run.
func RedisCPU(t testing.TB, rdb redis.UniversalClient) time.Duration {
	t.Helper()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		t.Fatalf("redis INFO cpu: %v", err)
	}
	var total time.Duration
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			secs, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("redis INFO %s: %v", k, err)
			}
			total += time.Duration(secs * float64(time.Second))
		}
	}
	return total
}
