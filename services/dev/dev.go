// Package dev runs the whole system in one process: an embedded NATS server
// with JetStream (file store under the data dir), an embedded in-memory
// Redis unless a Redis URL is given, the ingest, engine and dispatcher
// services, and one local agent. It is the first-run experience, not a
// production topology.
package dev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/bus"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/telemetry"
	"github.com/shanenoi/otariinae/services/agent"
	"github.com/shanenoi/otariinae/services/dispatcher"
	"github.com/shanenoi/otariinae/services/engine"
	"github.com/shanenoi/otariinae/services/ingest"
)

// Config is the environment of `otariinae dev` (prefix OTARIINAE_).
type Config struct {
	DataDir     string `split_words:"true" default:"./.otariinae" desc:"JetStream file store and agent workdir live here"`
	DevNATSAddr string `envconfig:"DEV_NATS_ADDR" default:"127.0.0.1:0" desc:"where the embedded NATS server listens (port 0: a free port)"`
	RedisURL    string `envconfig:"REDIS_URL" desc:"external Redis; empty runs an embedded in-memory Redis"`
	RedisPrefix string `split_words:"true" default:"otariinae:" desc:"prefix of every Redis key"`
	HTTPAddr    string `envconfig:"HTTP_ADDR" default:"127.0.0.1:8080" desc:"HTTP API, health and metrics"`
	ConfigFile  string `envconfig:"CONFIG" default:"./.otariinae/otariinae.yaml" desc:"YAML file of services, pipelines and webhooks (make run renders it from deployments/dev/otariinae.yaml)"`

	// Embedded, so each service's variables keep their own names
	// (OTARIINAE_AGENT_ID, not OTARIINAE_AGENT_AGENT_ID).
	IngestConfig
	EngineConfig
	DispatcherConfig
	AgentConfig
}

// Aliases give the embedded service configs distinct field names.
type (
	IngestConfig     = ingest.Config
	EngineConfig     = engine.Config
	DispatcherConfig = dispatcher.Config
	AgentConfig      = agent.Config
)

// Options are what a caller (main or a test) adds to Config.
type Options struct {
	Version string
	// Out receives the startup banner.
	Out io.Writer
	// Ready, when set, is called with the system's addresses once every
	// part is serving.
	Ready func(Addrs)
}

// Addrs are where a running dev system can be reached.
type Addrs struct {
	HTTP     string
	NATS     string
	Redis    string
	Embedded bool // Redis is the embedded in-memory one
}

// Run starts everything and blocks until ctx ends, then stops it all in
// reverse order: services first, then NATS and Redis.
func Run(ctx context.Context, cfg Config, opts Options, log *slog.Logger) error {
	conf, err := config.NewLive(cfg.ConfigFile)
	if err != nil {
		return err
	}
	if cfg.AgentConfig.ID == "" {
		cfg.AgentConfig.ID = "local"
	}
	if cfg.AgentConfig.Workdir == "" || cfg.AgentConfig.Workdir == agent.DefaultWorkdir {
		cfg.AgentConfig.Workdir = filepath.Join(cfg.DataDir, "agent")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	ns, err := startNATS(cfg)
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()

	addrs := Addrs{NATS: ns.ClientURL(), Redis: cfg.RedisURL}
	if cfg.RedisURL == "" {
		mr := miniredis.NewMiniRedis()
		mr.ClockTTL(true) // without it, keys with a TTL never expire
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("embedded redis: %w", err)
		}
		defer mr.Close()
		addrs.Redis, addrs.Embedded = "redis://"+mr.Addr(), true
	}
	st, err := store.Open(addrs.Redis, cfg.RedisPrefix)
	if err != nil {
		return err
	}
	defer st.Close()

	nc, err := bus.Connect(ns.ClientURL(), "otariinae-dev", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	agentNC, err := bus.Connect(ns.ClientURL(), "otariinae-dev-agent", log)
	if err != nil {
		return err
	}
	defer agentNC.Close()

	reg := telemetry.NewRegistry()
	in, err := ingest.New(cfg.IngestConfig, nc, st, conf, log.With("service", "ingest"), reg)
	if err != nil {
		return err
	}
	eng, err := engine.New(cfg.EngineConfig, nc, st, conf, log.With("service", "engine"), reg)
	if err != nil {
		return err
	}
	disp, err := dispatcher.New(cfg.DispatcherConfig, nc, conf, st.WebhookSecret, log.With("service", "dispatcher"), reg)
	if err != nil {
		return err
	}
	ag, err := agent.New(cfg.AgentConfig, agentNC, log.With("service", "agent"), reg, opts.Version)
	if err != nil {
		return err
	}

	var health telemetry.Health
	health.Add("nats", func(context.Context) error { return natsReady(nc) })
	health.Add("redis", st.Ping)
	r := chi.NewRouter()
	r.NotFound(api.NotFound)
	r.MethodNotAllowed(api.MethodNotAllowed)
	health.Mount(r, reg)
	in.Mount(r)

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}
	addrs.HTTP = "http://" + ln.Addr().String()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	run("http", func(ctx context.Context) error { return telemetry.Serve(ctx, ln, r, log) })
	run("ingest", in.Run)
	run("engine", eng.Run)
	run("reload", func(ctx context.Context) error {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		conf.ReloadOnSignal(ctx, hup, log)
		return nil
	})
	run("dispatcher", disp.Run)
	run("agent", ag.Run)

	if opts.Out != nil {
		redis := addrs.Redis
		if addrs.Embedded {
			redis += " (embedded, in memory: state is lost on exit)"
		}
		fmt.Fprintf(opts.Out, "otariinae dev %s\n  http    %s\n  nats    %s (JetStream store %s)\n  redis   %s\n  agent   %s (workdir %s)\n  config  %s (%d services, %d webhooks)\nCtrl-C stops.\n",
			opts.Version, addrs.HTTP, addrs.NATS, filepath.Join(cfg.DataDir, "nats"), redis,
			cfg.AgentConfig.ID, cfg.AgentConfig.Workdir, cfg.ConfigFile, len(conf.Get().Services), len(conf.Get().Webhooks))
	}
	if opts.Ready != nil {
		opts.Ready(addrs)
	}
	<-ctx.Done()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func startNATS(cfg Config) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.DevNATSAddr)
	if err != nil {
		return nil, fmt.Errorf("OTARIINAE_DEV_NATS_ADDR %q: %w", cfg.DevNATSAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("OTARIINAE_DEV_NATS_ADDR %q: bad port", cfg.DevNATSAddr)
	}
	if port == 0 {
		port = -1 // nats-server's "pick a free port"
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "otariinae-dev", Host: host, Port: port,
		JetStream: true, StoreDir: filepath.Join(cfg.DataDir, "nats"),
		NoSigs: true, NoLog: true, MaxPayload: 32 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded nats did not start in 15s (is the data dir locked by another otariinae dev?)")
	}
	return ns, nil
}

func natsReady(nc *nats.Conn) error {
	if !nc.IsConnected() {
		return errors.New("nats not connected")
	}
	return nil
}
