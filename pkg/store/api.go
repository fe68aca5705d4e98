package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shanenoi/otariinae/pkg/flow"
)

// This file holds what the /api/v1 routes read and write: idempotency
// records of trigger calls, filtered flow listings and artifact versions.

// IdempotencyTTL is how long an Idempotency-Key is remembered.
const IdempotencyTTL = 24 * time.Hour

// Idempotency is what an API Idempotency-Key was first used for.
type Idempotency struct {
	// Fingerprint identifies the request (route and body); the same key
	// with another fingerprint is a client error.
	Fingerprint string `json:"fingerprint"`
	// EventID is the event published for the key, and its Nats-Msg-Id.
	EventID string `json:"event_id"`
	// Published is set once the event got its PubAck: a retry answers
	// without publishing again.
	Published bool `json:"published"`
}

// ReserveIdempotency records rec under (scope, key) unless the key is
// taken, atomically (SET NX GET). It returns the record in force and
// whether it is rec (created).
func (s *Store) ReserveIdempotency(ctx context.Context, scope, key string, rec Idempotency) (Idempotency, bool, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return Idempotency{}, false, fmt.Errorf("encode idempotency record: %w", err)
	}
	old, err := s.rdb.SetArgs(ctx, s.keys.Idempotency(scope, key), b, redis.SetArgs{Mode: "NX", Get: true, TTL: IdempotencyTTL}).Result()
	if errors.Is(err, redis.Nil) {
		return rec, true, nil
	}
	if err != nil {
		return Idempotency{}, false, fmt.Errorf("reserve idempotency key: %w", err)
	}
	var cur Idempotency
	if err := json.Unmarshal([]byte(old), &cur); err != nil {
		return Idempotency{}, false, fmt.Errorf("decode idempotency record: %w", err)
	}
	return cur, false, nil
}

// GetIdempotency returns the record of (scope, key), if any.
func (s *Store) GetIdempotency(ctx context.Context, scope, key string) (Idempotency, bool, error) {
	b, err := s.rdb.Get(ctx, s.keys.Idempotency(scope, key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return Idempotency{}, false, nil
	}
	if err != nil {
		return Idempotency{}, false, fmt.Errorf("read idempotency key: %w", err)
	}
	var rec Idempotency
	if err := json.Unmarshal(b, &rec); err != nil {
		return Idempotency{}, false, fmt.Errorf("decode idempotency record: %w", err)
	}
	return rec, true, nil
}

// MarkIdempotencyPublished records that the key's event got its PubAck,
// keeping the key's expiry.
func (s *Store) MarkIdempotencyPublished(ctx context.Context, scope, key string, rec Idempotency) error {
	rec.Published = true
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode idempotency record: %w", err)
	}
	if err := s.rdb.SetArgs(ctx, s.keys.Idempotency(scope, key), b, redis.SetArgs{Mode: "XX", KeepTTL: true}).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("mark idempotency key published: %w", err)
	}
	return nil
}

// FlowQuery selects flows for GET /api/v1/flows.
type FlowQuery struct {
	Repo    string         // a repository's flows (org/repo); "" for all
	Service string         // "" for every service
	State   flow.FlowState // "" for every state
	Cursor  string         // the previous page's NextCursor
	Limit   int
	// MaxScan bounds the ids examined for one page when State filters
	// (default 20 × Limit, at least 500): a page may then hold fewer than
	// Limit items and still have a NextCursor.
	MaxScan int
}

// FlowsPage lists flows newest first, from the index of every flow or of
// one service, keeping those in q.State. The cursor is the position of the
// last flow examined, so pages never shift when flows are added.
func (s *Store) FlowsPage(ctx context.Context, q FlowQuery) (Page, error) {
	key := s.keys.Flows()
	switch {
	case q.Repo != "":
		key = s.keys.RepoFlows(RepoKey(q.Repo))
	case q.Service != "":
		key = s.keys.ServiceFlows(q.Service)
	}
	pos, err := parseZCursor(q.Cursor)
	if err != nil {
		return Page{}, err
	}
	budget := q.MaxScan
	if budget <= 0 {
		budget = max(20*q.Limit, 500)
	}
	var page Page
	var last *zpos // position of the last flow kept or examined
	scanned := 0
	for scanned < budget {
		n := min(q.Limit+1-len(page.Flows), budget-scanned)
		if q.State != "" {
			n = min(max(n, 100), budget-scanned)
		}
		zs, err := s.zAfter(ctx, key, pos, n)
		if err != nil {
			return Page{}, err
		}
		if len(zs) == 0 {
			return page, nil // the index is exhausted: no next page
		}
		ids := make([]string, len(zs))
		for i, z := range zs {
			ids[i] = z.Member.(string)
		}
		flows, err := s.getFlows(ctx, ids)
		if err != nil {
			return Page{}, err
		}
		for i, f := range flows {
			scanned++
			p := &zpos{score: int64(zs[i].Score), member: ids[i]}
			pos = p
			if f == nil || (q.State != "" && f.State != q.State) {
				continue
			}
			if len(page.Flows) == q.Limit {
				// One more match than asked: there is a next page.
				page.NextCursor = last.String()
				return page, nil
			}
			page.Flows = append(page.Flows, f)
			last = p
		}
	}
	// Out of budget: continue from the last flow examined.
	page.NextCursor = pos.String()
	return page, nil
}

// ArtifactVersion is one version of an artifact, first seen at FirstSeen.
type ArtifactVersion struct {
	Version   string
	FirstSeen time.Time
}

// ArtifactVersions lists an artifact's versions newest first.
func (s *Store) ArtifactVersions(ctx context.Context, artifact, cursor string, limit int) ([]ArtifactVersion, string, error) {
	pos, err := parseZCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	zs, err := s.zAfter(ctx, s.keys.ArtifactVersions(artifact), pos, limit+1)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(zs) > limit {
		zs = zs[:limit]
		last := zs[limit-1]
		next = (&zpos{score: int64(last.Score), member: last.Member.(string)}).String()
	}
	out := make([]ArtifactVersion, len(zs))
	for i, z := range zs {
		out[i] = ArtifactVersion{Version: z.Member.(string), FirstSeen: time.UnixMilli(int64(z.Score)).UTC()}
	}
	return out, next, nil
}

// Flows reads flows by id; a missing one is nil at its index.
func (s *Store) Flows(ctx context.Context, ids []string) ([]*flow.Flow, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return s.getFlows(ctx, ids)
}

// zpos is a position in a time-scored sorted set read newest first.
type zpos struct {
	score  int64
	member string
}

// String is the cursor form "<score>:<member>".
func (p *zpos) String() string {
	if p == nil {
		return ""
	}
	return strconv.FormatInt(p.score, 10) + ":" + p.member
}

func parseZCursor(c string) (*zpos, error) {
	if c == "" {
		return nil, nil
	}
	sc, m, ok := strings.Cut(c, ":")
	v, err := strconv.ParseInt(sc, 10, 64)
	if !ok || err != nil || m == "" {
		return nil, ErrBadCursor
	}
	return &zpos{score: v, member: m}, nil
}

// zAfter returns up to n members after pos (nil: from the newest), in
// ZREVRANGE order: score descending, then member descending. Members that
// share pos's score are read in full first, so any number of them pages
// correctly.
func (s *Store) zAfter(ctx context.Context, key string, pos *zpos, n int) ([]redis.Z, error) {
	if n <= 0 {
		return nil, nil
	}
	var out []redis.Z
	max := "+inf"
	if pos != nil {
		sc := strconv.FormatInt(pos.score, 10)
		same, err := s.rdb.ZRevRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Max: sc, Min: sc}).Result()
		if err != nil {
			return nil, fmt.Errorf("read index: %w", err)
		}
		for _, z := range same {
			if z.Member.(string) < pos.member {
				out = append(out, z)
				if len(out) == n {
					return out, nil
				}
			}
		}
		max = "(" + sc
	}
	zs, err := s.rdb.ZRevRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Max: max, Min: "-inf", Count: int64(n - len(out))}).Result()
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	return append(out, zs...), nil
}
