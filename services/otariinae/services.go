package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

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

// Each service reads its own HTTP address; the defaults differ so that all
// four can run on one host without configuration. Ingest, the HTTP entry,
// has the design's 127.0.0.1:8080.

// NATS is read by every service.
type NATS struct {
	NATSURL string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" desc:"NATS server(s), comma-separated"`
}

// Redis is read by the services that keep state.
type Redis struct {
	RedisURL    string `envconfig:"REDIS_URL" default:"redis://127.0.0.1:6379/0" desc:"redis://, rediss:// or unix:// URL"`
	RedisPrefix string `split_words:"true" default:"otariinae:" desc:"prefix of every Redis key"`
}

// File is the YAML configuration.
type File struct {
	ConfigFile string `envconfig:"CONFIG" required:"true" desc:"YAML file of services, pipelines and webhooks"`
}

type ingestSpec struct {
	Logging
	NATS
	Redis
	File
	HTTPAddr string `envconfig:"HTTP_ADDR" default:"127.0.0.1:8080" desc:"HTTP API, health and metrics"`
	ingest.Config
}

type engineSpec struct {
	Logging
	NATS
	Redis
	File
	HTTPAddr string `envconfig:"HTTP_ADDR" default:"127.0.0.1:8081" desc:"health and metrics"`
	engine.Config
}

type dispatcherSpec struct {
	Logging
	NATS
	Redis
	File
	HTTPAddr string `envconfig:"HTTP_ADDR" default:"127.0.0.1:8082" desc:"health and metrics"`
	dispatcher.Config
}

type agentSpec struct {
	Logging
	NATS
	HTTPAddr string `envconfig:"HTTP_ADDR" default:"127.0.0.1:8083" desc:"health and metrics"`
	agent.Config
}

// deps are what a standalone service connects to.
type deps struct {
	nc     *nats.Conn
	st     *store.Store
	conf   *config.Live
	reg    *prometheus.Registry
	health *telemetry.Health
}

func (d *deps) close() {
	if d.st != nil {
		_ = d.st.Close()
	}
	if d.nc != nil {
		_ = d.nc.Drain()
	}
}

func connect(name string, n NATS, r *Redis, f *File, log *slog.Logger) (*deps, error) {
	d := &deps{reg: telemetry.NewRegistry(), health: &telemetry.Health{}}
	if f != nil {
		conf, err := config.NewLive(f.ConfigFile)
		if err != nil {
			return nil, err
		}
		d.conf = conf
	}
	nc, err := bus.Connect(n.NATSURL, "otariinae-"+name, log)
	if err != nil {
		return nil, err
	}
	d.nc = nc
	d.health.Add("nats", func(context.Context) error {
		if !nc.IsConnected() {
			return errors.New("not connected")
		}
		return nil
	})
	if r != nil {
		st, err := store.Open(r.RedisURL, r.RedisPrefix)
		if err != nil {
			d.close()
			return nil, err
		}
		d.st = st
		d.health.Add("redis", st.Ping)
	}
	return d, nil
}

// serve runs the HTTP server and the service loop until ctx ends or
// either fails.
func serve(ctx context.Context, addr string, d *deps, mount func(chi.Router), loop func(context.Context) error, log *slog.Logger) error {
	r := chi.NewRouter()
	r.NotFound(api.NotFound)
	r.MethodNotAllowed(api.MethodNotAllowed)
	d.health.Mount(r, d.reg)
	if mount != nil {
		mount(r)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	log.Info("serving", "http", "http://"+ln.Addr().String())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d.conf != nil {
		// SIGHUP reloads the config file; an invalid one is logged and
		// the config in force stays.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go d.conf.ReloadOnSignal(ctx, hup, log)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs[0] = telemetry.Serve(ctx, ln, r, log)
		cancel()
	}()
	if loop != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[1] = loop(ctx)
			cancel()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func runIngest(ctx context.Context, s *ingestSpec, log *slog.Logger) error {
	d, err := connect("ingest", s.NATS, &s.Redis, &s.File, log)
	if err != nil {
		return err
	}
	defer d.close()
	in, err := ingest.New(s.Config, d.nc, d.st, d.conf, log, d.reg)
	if err != nil {
		return err
	}
	return serve(ctx, s.HTTPAddr, d, in.Mount, in.Run, log)
}

func runEngine(ctx context.Context, s *engineSpec, log *slog.Logger) error {
	d, err := connect("engine", s.NATS, &s.Redis, &s.File, log)
	if err != nil {
		return err
	}
	defer d.close()
	eng, err := engine.New(s.Config, d.nc, d.st, d.conf, log, d.reg)
	if err != nil {
		return err
	}
	return serve(ctx, s.HTTPAddr, d, nil, eng.Run, log)
}

func runDispatcher(ctx context.Context, s *dispatcherSpec, log *slog.Logger) error {
	d, err := connect("dispatcher", s.NATS, &s.Redis, &s.File, log)
	if err != nil {
		return err
	}
	defer d.close()
	disp, err := dispatcher.New(s.Config, d.nc, d.conf, d.st.WebhookSecret, log, d.reg)
	if err != nil {
		return err
	}
	return serve(ctx, s.HTTPAddr, d, nil, disp.Run, log)
}

func runAgent(ctx context.Context, s *agentSpec, log *slog.Logger) error {
	d, err := connect("agent", s.NATS, nil, nil, log)
	if err != nil {
		return err
	}
	defer d.close()
	ag, err := agent.New(s.Config, d.nc, log, d.reg, version)
	if err != nil {
		return err
	}
	return serve(ctx, s.HTTPAddr, d, nil, ag.Run, log)
}
