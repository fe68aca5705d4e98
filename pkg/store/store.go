// Package store is everything otariinae keeps in Redis: flow state with its
// outbox and applied-event markers, the read indexes, the agent registry and
// generated webhook secrets. Every key is built in keys.go and every script
// lives in scripts/*.lua.
package store

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/shanenoi/otariinae/pkg/config"
)

// Store is a Redis-backed store under one key prefix.
type Store struct {
	rdb  redis.UniversalClient
	keys Keys
	// batch coalesces the hot path's delivery reads and writes (deliveries.go).
	batch *coalescer
}

// New returns a store using rdb with keys under prefix (e.g. "otariinae:").
func New(rdb redis.UniversalClient, prefix string) *Store {
	return &Store{rdb: rdb, keys: Keys{Prefix: prefix}, batch: &coalescer{rdb: rdb}}
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.rdb.Ping(ctx).Err() }

// Client returns the underlying client.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// WebhookSecret returns the persisted generated secret of a webhook whose
// config has none, creating it on first use. Every replica gets the same one.
func (s *Store) WebhookSecret(ctx context.Context, webhook string) (string, error) {
	key := s.keys.WebhookSecret(webhook)
	if err := s.rdb.SetNX(ctx, key, config.NewSecret(), 0).Err(); err != nil {
		return "", fmt.Errorf("create secret of webhook %s: %w", webhook, err)
	}
	v, err := s.rdb.Get(ctx, key).Result()
	if err != nil {
		return "", fmt.Errorf("read secret of webhook %s: %w", webhook, err)
	}
	return v, nil
}

// Open connects to the Redis at url (redis://, rediss:// or unix://) and
// returns a store under prefix. It does not wait for Redis to answer.
func Open(url, prefix string) (*Store, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	return New(redis.NewClient(opts), prefix), nil
}

// Close closes the client.
func (s *Store) Close() error { return s.rdb.Close() }
