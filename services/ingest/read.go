package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// DeploymentItem is one row of GET /{org}/{repo}/deployments/.
type DeploymentItem struct {
	Commit    string         `json:"commit"`
	Ref       string         `json:"ref"`
	Service   string         `json:"service"`
	FlowID    string         `json:"flow_id"`
	State     flow.FlowState `json:"state"`
	CreatedAt time.Time      `json:"created_at"`
}

// DeploymentList is the body of GET /{org}/{repo}/deployments/.
type DeploymentList struct {
	Items      []DeploymentItem `json:"items"`
	NextCursor *string          `json:"next_cursor"`
}

// CommitDeployments is the body of GET /{org}/{repo}/deployments/{commit}.
type CommitDeployments struct {
	Commit string       `json:"commit"`
	Flows  []*flow.Flow `json:"flows"`
}

const (
	defaultLimit = 50
	maxLimit     = 500
)

func (in *Ingest) repo(w http.ResponseWriter, r *http.Request) (string, bool) {
	repo := chi.URLParam(r, "org") + "/" + chi.URLParam(r, "repo")
	if len(in.conf.Get().ServicesForRepository(repo)) == 0 {
		api.Error(w, api.CodeRepositoryUnknown, "no service deploys "+repo)
		return "", false
	}
	return repo, true
}

func (in *Ingest) listDeployments(w http.ResponseWriter, r *http.Request) {
	repo, ok := in.repo(w, r)
	if !ok {
		return
	}
	limit, ok := queryLimit(w, r)
	if !ok {
		return
	}
	page, err := in.st.RepoFlows(r.Context(), repo, r.URL.Query().Get("cursor"), limit)
	if errors.Is(err, store.ErrBadCursor) {
		api.Error(w, api.CodeBadRequest, "cursor is not one this API returned")
		return
	}
	if err != nil {
		in.unavailable(w, "list deployments", err)
		return
	}
	out := DeploymentList{Items: make([]DeploymentItem, 0, len(page.Flows))}
	for _, f := range page.Flows {
		out.Items = append(out.Items, DeploymentItem{
			Commit: f.Commit, Ref: f.Ref, Service: f.Service, FlowID: f.ID, State: f.State, CreatedAt: f.CreatedAt,
		})
	}
	out.NextCursor = cursorPtr(page.NextCursor)
	api.JSON(w, http.StatusOK, out)
}

func validCommit(c string) bool {
	if len(c) < 4 || len(c) > 64 {
		return false
	}
	for _, r := range c {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}

// commitFlows loads the flows of the {commit} in the URL, answering the
// error itself when there are none.
func (in *Ingest) commitFlows(w http.ResponseWriter, r *http.Request) (string, []*flow.Flow, bool) {
	repo, ok := in.repo(w, r)
	if !ok {
		return "", nil, false
	}
	commit := strings.ToLower(chi.URLParam(r, "commit"))
	if !validCommit(commit) {
		api.Error(w, api.CodeBadRequest, "commit must be a hexadecimal SHA")
		return "", nil, false
	}
	flows, err := in.st.CommitFlows(r.Context(), repo, commit)
	if err != nil {
		in.unavailable(w, "read deployments", err)
		return "", nil, false
	}
	if len(flows) == 0 {
		api.Error(w, api.CodeDeploymentNotFound, "no deployment of commit "+commit+" in "+repo)
		return "", nil, false
	}
	return commit, flows, true
}

func (in *Ingest) commitDeployments(w http.ResponseWriter, r *http.Request) {
	commit, flows, ok := in.commitFlows(w, r)
	if !ok {
		return
	}
	out := CommitDeployments{Commit: commit, Flows: make([]*flow.Flow, len(flows))}
	for i, f := range flows {
		out.Flows[i] = f.View()
	}
	api.JSON(w, http.StatusOK, out)
}

// commitLog writes every job's output for a commit: deployments in
// pipeline order, lines in the order agents published them, each prefixed
// by "[environment agent]". ?environment= and ?agent= filter; ?follow=1
// streams until the flows end (see follow.go).
func (in *Ingest) commitLog(w http.ResponseWriter, r *http.Request) {
	filter, err := parseLogFilter(r)
	if err != nil {
		api.Error(w, api.CodeBadRequest, err.Error())
		return
	}
	commit, flows, ok := in.commitFlows(w, r)
	if !ok {
		return
	}
	if !filter.matchesAny(flows) {
		api.Error(w, api.CodeDeploymentNotFound, "commit "+commit+" has no deployment to environment "+filter.environment)
		return
	}
	if follow, _ := strconv.ParseBool(r.URL.Query().Get("follow")); follow {
		repo := chi.URLParam(r, "org") + "/" + chi.URLParam(r, "repo")
		in.followLog(w, r, repo, commit, flows, filter)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	var buf strings.Builder
	for _, src := range logSources(flows, filter) {
		if err := in.readLog(ctx, src, &buf); errors.Is(err, errTruncated) {
			break
		} else if err != nil {
			in.unavailable(w, "read logs", err)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, buf.String())
}

// readLog appends one deployment's stored output to buf.
// MaxLogBytes caps one answer of the (non-follow) log route: the LOGS
// stream keeps whatever a deploy script prints.
const MaxLogBytes = 64 << 20

// errTruncated stops reading once MaxLogBytes are in the answer.
var errTruncated = errors.New("log truncated")

func (in *Ingest) readLog(ctx context.Context, src logSource, buf *strings.Builder) error {
	stream, err := in.js.Stream(ctx, wire.StreamLogs)
	if err != nil {
		return fmt.Errorf("logs stream: %w", err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(src.subject))
	if err != nil {
		return fmt.Errorf("logs stream info: %w", err)
	}
	var total uint64
	for _, n := range info.State.Subjects {
		total += n
	}
	if total == 0 {
		return nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{src.subject}})
	if err != nil {
		return fmt.Errorf("read logs: %w", err)
	}
	defer func() {
		// Not left for the server's inactivity cleanup.
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	// Fetch exactly what the stream held when we looked: a batch asking for
	// more would wait out its timeout for lines that may never come.
	for remaining := total; remaining > 0; {
		batch, err := cons.Fetch(int(min(remaining, 256)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("read logs: %w", err)
		}
		n := uint64(0)
		for msg := range batch.Messages() {
			n++
			if buf.Len() >= MaxLogBytes {
				continue // drain the batch; truncated below
			}
			buf.WriteString(formatLogLine(src.prefix, msg.Subject(), msg.Data()))
		}
		if buf.Len() >= MaxLogBytes {
			fmt.Fprintf(buf, "[otariinae] output truncated at %d MiB: narrow it with ?environment= and ?agent=\n", MaxLogBytes>>20)
			return errTruncated
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("read logs: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("read logs: %d lines expected, none arrived", remaining)
		}
		remaining -= min(n, remaining)
	}
	return nil
}

func (in *Ingest) unavailable(w http.ResponseWriter, what string, err error) {
	in.log.Warn(what, "err", err)
	api.Error(w, api.CodeUnavailable, what+": a dependency is unavailable; retry later")
}
