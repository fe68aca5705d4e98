package agent

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Job results, the values of the result label.
const (
	resultSucceeded = "succeeded"
	resultFailed    = "failed"
)

type metrics struct {
	jobs     *prometheus.CounterVec
	duration prometheus.Histogram
	running  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_agent_jobs_total",
			Help: "Jobs this agent finished, by result (succeeded: exit code 0).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "otariinae_agent_job_duration_seconds",
			Help:    "Time from a job's start (checkout included) to its finished report.",
			Buckets: []float64{1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600},
		}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "otariinae_agent_running_jobs",
			Help: "Jobs this agent is running now (0 or 1).",
		}),
	}
	// Both results exist from the start, so rate() over them is defined.
	m.jobs.WithLabelValues(resultSucceeded)
	m.jobs.WithLabelValues(resultFailed)
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.jobs, m.duration, m.running} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register agent metrics: %w", err)
		}
	}
	return m, nil
}
