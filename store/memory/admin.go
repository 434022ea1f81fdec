package memory

import (
	"bytes"
	"context"
	"time"

	"github.com/idemkey/idempotency"
)

var (
	_ idempotency.Inspector = (*Store)(nil)
	_ idempotency.Forgetter = (*Store)(nil)
	_ idempotency.Counter   = (*Store)(nil)
)

// Inspect reports what key holds: a live claim with its lease left, a
// record with its time left (zero when it never expires) and a copy of its
// bytes, or nothing. It changes nothing that a caller could see.
func (s *Store) Inspect(_ context.Context, key string) (idempotency.Entry, error) {
	h := s.hashOf(key)
	sh := s.shard(h)
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, _ := s.live(sh, h, key, now)
	if i == none {
		return idempotency.Entry{}, nil
	}
	sl := &sh.slots[i]
	if !sl.done {
		return idempotency.Entry{State: idempotency.StateInFlight, TTL: time.Duration(sl.exp - now)}, nil
	}
	var ttl time.Duration
	if sl.exp != never {
		ttl = time.Duration(sl.exp - now)
	}
	// A copy, so that a tool may keep or change it as it likes.
	return idempotency.Entry{State: idempotency.StateCompleted, TTL: ttl, Record: bytes.Clone(sh.record(sl))}, nil
}

// Forget deletes key's live claim or unexpired record, and reports whether
// there was one. Whoever waits on a forgotten claim is woken, and the
// claim's former holder can no longer complete, release or renew it.
func (s *Store) Forget(_ context.Context, key string) (bool, error) {
	h := s.hashOf(key)
	sh := s.shard(h)
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, prev := s.live(sh, h, key, now)
	if i == none {
		return false, nil
	}
	s.remove(sh, h, i, prev, key)
	return true, nil
}

// Count returns how many live claims and unexpired records the store
// holds. It locks one shard at a time, so it is a consistent count of each
// shard but not of the store as a whole while other calls change it.
func (s *Store) Count(context.Context) (idempotency.Counts, error) {
	var c idempotency.Counts
	for i := range s.shards {
		sh := &s.shards[i]
		now := s.now()
		sh.mu.Lock()
		for j := range sh.slots {
			sl := &sh.slots[j]
			if sl.exp == 0 || now >= sl.exp {
				continue // free, or past its deadline
			}
			if sl.done {
				c.Records++
			} else {
				c.Claims++
			}
		}
		sh.mu.Unlock()
	}
	return c, nil
}
