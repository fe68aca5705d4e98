package store

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// DeliveryTTL is how long a GitHub delivery id is remembered: longer than
// the 3 days in which GitHub lets anyone redeliver it.
const DeliveryTTL = 7 * 24 * time.Hour

// DeliveryState is what ingest did with a GitHub delivery.
type DeliveryState string

// Delivery states. DeliveryUnknown means the delivery never reached us (or
// its record expired).
const (
	DeliveryUnknown   DeliveryState = ""
	DeliveryPublished DeliveryState = "published" // in EVENTS
	DeliveryIgnored   DeliveryState = "ignored"   // received and answered, nothing to publish
)

var (
	//go:embed scripts/lease_renew.lua
	leaseRenewSrc    string
	leaseRenewScript = redis.NewScript(leaseRenewSrc)

	//go:embed scripts/lease_release.lua
	leaseReleaseSrc    string
	leaseReleaseScript = redis.NewScript(leaseReleaseSrc)
)

// DeliveryState returns what ingest recorded for delivery id.
func (s *Store) DeliveryState(ctx context.Context, id string) (DeliveryState, error) {
	cmd, err := s.batch.do(ctx, func(p redis.Pipeliner) redis.Cmder { return p.Get(ctx, s.keys.Delivery(id)) })
	var v string
	if err == nil {
		v = cmd.(*redis.StringCmd).Val()
	}
	if errors.Is(err, redis.Nil) {
		return DeliveryUnknown, nil
	}
	if err != nil {
		return DeliveryUnknown, fmt.Errorf("read delivery %s: %w", id, err)
	}
	return DeliveryState(v), nil
}

// DeliverySeen reports whether delivery id was published to EVENTS in the
// last DeliveryTTL. A delivery that was only ignored is not "seen": after a
// config change its redelivery must be able to deploy.
func (s *Store) DeliverySeen(ctx context.Context, id string) (bool, error) {
	st, err := s.DeliveryState(ctx, id)
	return st == DeliveryPublished, err
}

// RecordDelivery records that delivery id is in EVENTS, for DeliveryTTL. It
// overwrites an "ignored" record (a redelivery after a config change), so it
// is a plain SET EX rather than SET NX: both writers of the same delivery
// write the same value.
func (s *Store) RecordDelivery(ctx context.Context, id string) error {
	_, err := s.batch.do(ctx, func(p redis.Pipeliner) redis.Cmder {
		return p.Set(ctx, s.keys.Delivery(id), string(DeliveryPublished), DeliveryTTL)
	})
	if err != nil {
		return fmt.Errorf("record delivery %s: %w", id, err)
	}
	return nil
}

// RecordIgnored records that delivery id reached us and needed nothing
// published (SET NX: it never downgrades a published record), so the
// repair loop does not ask GitHub to redeliver it.
func (s *Store) RecordIgnored(ctx context.Context, id string) error {
	_, err := s.batch.do(ctx, func(p redis.Pipeliner) redis.Cmder {
		return p.SetNX(ctx, s.keys.Delivery(id), string(DeliveryIgnored), DeliveryTTL)
	})
	if err != nil {
		return fmt.Errorf("record ignored delivery %s: %w", id, err)
	}
	return nil
}

// MarkRedelivery records that a redelivery of guid is being requested. It
// returns false when one was requested before (within ttl).
func (s *Store) MarkRedelivery(ctx context.Context, guid string, ttl time.Duration) (bool, error) {
	ok, err := s.rdb.SetNX(ctx, s.keys.RedeliveryRequested(guid), time.Now().UTC().Format(time.RFC3339), ttl).Result()
	if err != nil {
		return false, fmt.Errorf("mark redelivery of %s: %w", guid, err)
	}
	return ok, nil
}

// UnmarkRedelivery forgets a request that GitHub refused, so that the next
// scan asks again.
func (s *Store) UnmarkRedelivery(ctx context.Context, guid string) error {
	if err := s.rdb.Del(ctx, s.keys.RedeliveryRequested(guid)).Err(); err != nil {
		return fmt.Errorf("unmark redelivery of %s: %w", guid, err)
	}
	return nil
}

// RepairScanTime returns when hook was last scanned completely (zero: never).
func (s *Store) RepairScanTime(ctx context.Context, hook string) (time.Time, error) {
	ms, err := s.rdb.Get(ctx, s.keys.RepairScan(hook)).Int64()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read scan time of %s: %w", hook, err)
	}
	return time.UnixMilli(ms).UTC(), nil
}

// SetRepairScanTime records a complete scan of hook at t.
func (s *Store) SetRepairScanTime(ctx context.Context, hook string, t time.Time) error {
	if err := s.rdb.Set(ctx, s.keys.RepairScan(hook), t.UnixMilli(), DeliveryTTL).Err(); err != nil {
		return fmt.Errorf("record scan time of %s: %w", hook, err)
	}
	return nil
}

// AcquireLease takes the lease name for token if nobody holds it.
func (s *Store) AcquireLease(ctx context.Context, name, token string, ttl time.Duration) (bool, error) {
	ok, err := s.rdb.SetNX(ctx, s.keys.Lease(name), token, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	return ok, nil
}

// RenewLease extends the lease name if token still holds it; false means
// it was lost.
func (s *Store) RenewLease(ctx context.Context, name, token string, ttl time.Duration) (bool, error) {
	n, err := leaseRenewScript.Run(ctx, s.rdb, []string{s.keys.Lease(name)}, token, ttl.Milliseconds()).Int64()
	if err != nil {
		return false, fmt.Errorf("renew lease %s: %w", name, err)
	}
	return n == 1, nil
}

// ReleaseLease gives the lease name up if token still holds it.
func (s *Store) ReleaseLease(ctx context.Context, name, token string) error {
	if err := leaseReleaseScript.Run(ctx, s.rdb, []string{s.keys.Lease(name)}, token).Err(); err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
