// Command otariinae is the one binary of the system: `otariinae ingest`,
// `engine`, `agent` and `dispatcher` run one service each; `otariinae dev`
// runs them all with an embedded NATS and Redis.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/kelseyhightower/envconfig"
	"github.com/spf13/cobra"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/telemetry"
	"github.com/shanenoi/otariinae/services/dev"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Logging is read by every command.
type Logging struct {
	LogFormat string `split_words:"true" default:"text" desc:"text or json"`
	LogLevel  string `split_words:"true" default:"info" desc:"debug, info, warn or error"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// A second signal forces the exit a stuck shutdown would delay.
		<-ctx.Done()
		stop()
		force := make(chan os.Signal, 1)
		signal.Notify(force, os.Interrupt, syscall.SIGTERM)
		<-force
		fmt.Fprintln(os.Stderr, "otariinae: second signal, exiting now")
		os.Exit(130)
	}()
	if err := root().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "otariinae:", err)
		os.Exit(1)
	}
}

func root() *cobra.Command {
	cmd := &cobra.Command{
		Use:           "otariinae",
		Short:         "Push-to-deploy for fleets of ordinary hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.AddCommand(
		serviceCommand("ingest", "Run the HTTP entry: GitHub webhooks and the read API", &ingestSpec{}, runIngest),
		serviceCommand("engine", "Run the flow engine: EVENTS in, state in Redis, jobs and hooks out", &engineSpec{}, runEngine),
		serviceCommand("agent", "Run a deploy agent on this host (needs only NATS)", &agentSpec{}, runAgent),
		serviceCommand("dispatcher", "Deliver hook requests to webhook subscribers", &dispatcherSpec{}, runDispatcher),
		serviceCommand("dev", "Run everything in one process with embedded NATS and Redis", &devSpec{}, runDev),
		configCommand(),
		&cobra.Command{
			Use:   "version",
			Short: "Print the version",
			Args:  cobra.NoArgs,
			Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), "otariinae", version) },
		},
	)
	return cmd
}

// serviceCommand builds a subcommand whose configuration is the
// environment described by spec; --help lists every variable it reads.
func serviceCommand[T any](name, short string, spec *T, run func(ctx context.Context, spec *T, log *slog.Logger) error) *cobra.Command {
	cmd := &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := envconfig.Process("otariinae", spec); err != nil {
				// envconfig names keys without their prefix.
				msg := strings.Replace(err.Error(), "required key ", "required variable OTARIINAE_", 1)
				return fmt.Errorf("environment: %s", msg)
			}
			lg := loggingOf(spec)
			log, err := telemetry.NewLogger(os.Stderr, lg.LogFormat, lg.LogLevel)
			if err != nil {
				return fmt.Errorf("environment: OTARIINAE_LOG_*: %w", err)
			}
			log = log.With("version", version)
			return run(c.Context(), spec, log)
		},
	}
	cmd.Long = short + "\n\n" + envHelp(spec)
	return cmd
}

type hasLogging interface{ logging() Logging }

func (l Logging) logging() Logging { return l }

func loggingOf(spec any) Logging {
	if h, ok := spec.(hasLogging); ok {
		return h.logging()
	}
	return Logging{LogFormat: "text", LogLevel: "info"}
}

// envHelp renders the variables a spec reads, with defaults.
func envHelp(spec any) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	const format = "Environment:\n{{range .}}  {{usage_key .}}\t{{usage_default .}}\t{{usage_description .}}\n{{end}}"
	if err := envconfig.Usagef("otariinae", spec, tw, format); err != nil {
		return "Environment: " + err.Error()
	}
	_ = tw.Flush()
	return b.String()
}

func configCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with the YAML configuration"}
	cmd.AddCommand(&cobra.Command{
		Use:   "validate FILE",
		Short: "Check a configuration file and report the first problem",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			conf, err := config.Load(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: ok (%d services, %d webhooks)\n", args[0], len(conf.Services), len(conf.Webhooks))
			return nil
		},
	})
	return cmd
}

type devSpec struct {
	Logging
	dev.Config
}

func runDev(ctx context.Context, spec *devSpec, log *slog.Logger) error {
	err := dev.Run(ctx, spec.Config, dev.Options{Version: version, Out: os.Stdout}, log)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
