package ingest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"regexp"
	"time"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/store"
)

// HeaderRequestID carries the request id: the client's when it sent a
// usable one, else a fresh one. Every /api/v1 answer has it, and the audit
// records it.
const HeaderRequestID = "X-Request-Id"

var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

type requestIDKey struct{}

func requestID(ctx context.Context) string {
	v, _ := ctx.Value(requestIDKey{}).(string)
	return v
}

// withRequestID gives every request an id (header and context).
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(HeaderRequestID)
		if !requestIDRE.MatchString(id) {
			id = newID("req_")
		}
		w.Header().Set(HeaderRequestID, id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id)))
	})
}

// newID returns prefix + 32 random hex digits.
func newID(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// auditNote is what a write handler tells the audit about itself.
type auditNote struct {
	target  string
	eventID string
}

type auditKey struct{}

// noteAudit records the target (and event) of the write being served.
func noteAudit(r *http.Request, target, eventID string) {
	if n, ok := r.Context().Value(auditKey{}).(*auditNote); ok {
		if target != "" {
			n.target = target
		}
		if eventID != "" {
			n.eventID = eventID
		}
	}
}

// audited records every call of a write route, after authentication, in
// the audit stream: who, action, target, status, when, request id. The
// entry is written before the status line goes out, so a client that got
// its answer finds its call in GET /api/v1/audit.
func (in *Ingest) audited(action string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			note := &auditNote{}
			r = r.WithContext(context.WithValue(r.Context(), auditKey{}, note))
			aw := &auditWriter{ResponseWriter: w}
			aw.record = func(status int) {
				e := store.AuditEntry{
					At: time.Now().UTC(), By: By(r.Context()), Action: action, Target: note.target,
					Status: status, RequestID: requestID(r.Context()), EventID: note.eventID,
				}
				ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Second)
				defer cancel()
				if err := in.st.AddAudit(ctx, e); err != nil {
					in.log.WarnContext(ctx, "audit write lost", "action", action, "by", e.By, "target", e.Target, "status", status, "err", err)
				}
			}
			next.ServeHTTP(aw, r)
			if !aw.wrote {
				aw.WriteHeader(http.StatusOK)
			}
		})
	}
}

type auditWriter struct {
	http.ResponseWriter
	wrote  bool
	record func(status int)
}

func (a *auditWriter) WriteHeader(code int) {
	if !a.wrote {
		a.wrote = true
		a.record(code)
	}
	a.ResponseWriter.WriteHeader(code)
}

func (a *auditWriter) Write(b []byte) (int, error) {
	if !a.wrote {
		a.WriteHeader(http.StatusOK)
	}
	return a.ResponseWriter.Write(b)
}

func (a *auditWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// AuditList is the body of GET /api/v1/audit.
type AuditList struct {
	Items      []store.AuditEntry `json:"items"`
	NextCursor *string            `json:"next_cursor"`
}

func (in *Ingest) listAudit(w http.ResponseWriter, r *http.Request) {
	limit, ok := queryLimit(w, r)
	if !ok {
		return
	}
	items, next, err := in.st.AuditPage(r.Context(), r.URL.Query().Get("cursor"), limit)
	if errors.Is(err, store.ErrBadCursor) {
		api.Error(w, api.CodeBadRequest, "cursor is not one this API returned")
		return
	}
	if err != nil {
		in.unavailable(w, "read audit", err)
		return
	}
	api.JSON(w, http.StatusOK, AuditList{Items: items, NextCursor: cursorPtr(next)})
}
