package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// AuditMaxLen bounds the audit stream: XADD trims it to about this many
// entries (MAXLEN ~), dropping the oldest.
const AuditMaxLen = 100000

// AuditEntry is one write through the API.
type AuditEntry struct {
	ID        string    `json:"id"` // the stream entry id, set on read
	At        time.Time `json:"at"`
	By        string    `json:"by"`     // the API token's name
	Action    string    `json:"action"` // e.g. artifact.create, flow.cancel
	Target    string    `json:"target"` // what it acted on: a flow, deployment/promotion, artifact@version
	Status    int       `json:"status"` // the HTTP status answered
	RequestID string    `json:"request_id"`
	EventID   string    `json:"event_id,omitempty"` // the event published, if any
}

// AddAudit appends e to the audit stream.
func (s *Store) AddAudit(ctx context.Context, e AuditEntry) error {
	err := s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: s.keys.Audit(),
		MaxLen: AuditMaxLen,
		Approx: true,
		Values: []any{
			"at", e.At.UTC().Format(time.RFC3339Nano),
			"by", e.By,
			"action", e.Action,
			"target", e.Target,
			"status", strconv.Itoa(e.Status),
			"request_id", e.RequestID,
			"event_id", e.EventID,
		},
	}).Err()
	if err != nil {
		return fmt.Errorf("append audit %s: %w", e.Action, err)
	}
	return nil
}

// AuditPage lists audit entries newest first. cursor is the NextCursor of
// the previous page ("" for the first); NextCursor is "" on the last page.
func (s *Store) AuditPage(ctx context.Context, cursor string, limit int) ([]AuditEntry, string, error) {
	max := "+"
	if cursor != "" {
		if !validStreamID(cursor) {
			return nil, "", ErrBadCursor
		}
		max = "(" + cursor // exclusive (Redis 6.2+)
	}
	msgs, err := s.rdb.XRevRangeN(ctx, s.keys.Audit(), max, "-", int64(limit)+1).Result()
	if err != nil {
		return nil, "", fmt.Errorf("read audit: %w", err)
	}
	next := ""
	if len(msgs) > limit {
		msgs = msgs[:limit]
		next = msgs[limit-1].ID
	}
	out := make([]AuditEntry, 0, len(msgs))
	for _, m := range msgs {
		e := AuditEntry{ID: m.ID}
		str := func(k string) string { v, _ := m.Values[k].(string); return v }
		e.By, e.Action, e.Target = str("by"), str("action"), str("target")
		e.RequestID, e.EventID = str("request_id"), str("event_id")
		e.Status, _ = strconv.Atoi(str("status"))
		at, err := time.Parse(time.RFC3339Nano, str("at"))
		if err != nil {
			return nil, "", fmt.Errorf("decode audit entry %s: %w", m.ID, errors.New("bad time"))
		}
		e.At = at
		out = append(out, e)
	}
	return out, next, nil
}

// validStreamID reports whether id looks like "<ms>-<seq>".
func validStreamID(id string) bool {
	ms, seq, ok := strings.Cut(id, "-")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil
}
