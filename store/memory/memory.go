package memory

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"sync/atomic"
	"time"

	"github.com/idemkey/idempotency"
)

// ErrFull is the error, wrapped, that [Store.Claim] returns when the store
// holds [WithMaxRecords] live claims and unexpired records and so cannot take
// a new claim. It is a store failure: the engine answers it as one (503 /
// CodeUnavailable, or runs the handler unprotected when it fails open).
//
// [Store.Claim] and [Store.Complete] also return it, wrapped, in the
// unlikely case that the keys and records of one of the store's 64 shards
// would take more than 4 GiB.
var ErrFull = errors.New("memory: store is full")

const (
	defaultMaxRecords = 100_000

	// shardCount spreads keys over this many independently locked shards, so
	// that concurrent requests seldom wait for each other. A power of two.
	shardCount = 64

	// never is the deadline of a record that does not expire.
	never = math.MaxInt64

	// sweepEvery is how often, at most, a shard is searched for expired
	// entries when nothing forces it. Entries past their deadline are
	// already invisible, so sweeping only returns memory; doing it seldom
	// keeps its cost, a walk over the shard, near zero.
	sweepEvery = int64(10 * time.Second)
)

var (
	_ idempotency.Store       = (*Store)(nil)
	_ idempotency.Waiter      = (*Store)(nil)
	_ idempotency.NonBlocking = (*Store)(nil)
)

// Store is an in-memory [idempotency.Store] and [idempotency.Waiter]. Create
// it with [New]; the zero value is not usable. It is safe for concurrent
// use.
type Store struct {
	base time.Time // origin of the store's monotonic clock
	seed maphash.Seed
	// hash, when set, hashes keys instead of maphash, so that tests can
	// make different keys collide.
	hash    func(key string) uint64
	max     int64
	errFull error
	// arenaMax bounds the live bytes of each shard's arena, at most
	// maxArena; tests lower it.
	arenaMax int
	count    atomic.Int64  // entries held, expired or not, in all shards
	cursor   atomic.Uint32 // shard where the next search for room starts
	shards   [shardCount]shard
}

// New returns an empty store configured by opts. It starts no goroutine.
func New(opts ...Option) *Store {
	s := &Store{
		base:     time.Now(),
		seed:     maphash.MakeSeed(),
		max:      defaultMaxRecords,
		arenaMax: maxArena,
	}
	for _, opt := range opts {
		opt.apply(s)
	}
	s.errFull = fmt.Errorf("%w (%d records)", ErrFull, s.max)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.index = make(map[uint64]int32)
		sh.earliest = never
	}
	return s
}

// Claim claims key for token with the given lease, if the key holds neither
// a live claim nor an unexpired record; otherwise it reports what the key
// holds. The record of a [idempotency.StateCompleted] result is a slice of
// the store's own memory, shared with every other caller: it must not be
// modified. It stays valid and unchanged for as long as the caller keeps it,
// and keeps that memory alive meanwhile.
//
// When the store is full, Claim drops expired entries to make room, and
// returns an error wrapping [ErrFull] only when none is left: however many
// claims race for the room, none is refused while an expired entry could
// make room for it. It returns an error too for a lease that is not
// positive. It never blocks on ctx.
func (s *Store) Claim(_ context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	if lease <= 0 {
		return idempotency.ClaimResult{}, fmt.Errorf("memory: claim with lease %v: the lease must be positive", lease)
	}
	h := s.hashOf(key)
	sh := s.shard(h)
	for {
		now := s.now()
		sh.mu.Lock()
		if i, _ := s.live(sh, h, key, now); i != none {
			var res idempotency.ClaimResult
			switch sl := &sh.slots[i]; {
			case sl.done:
				res = idempotency.ClaimResult{State: idempotency.StateCompleted, Record: sh.record(sl)}
			case sh.holdsToken(sl, token):
				res = idempotency.ClaimResult{State: idempotency.StateClaimed}
			default:
				res = idempotency.ClaimResult{State: idempotency.StateInFlight, LeaseLeft: time.Duration(sl.exp - now)}
			}
			sh.mu.Unlock()
			return res, nil
		}
		if s.count.Add(1) <= s.max {
			exp := deadline(now, lease)
			ok := sh.insert(h, key, token, exp, s.arenaMax)
			if !ok && now >= sh.earliest {
				// Expired entries may make room in the arena.
				s.sweep(sh, now)
				ok = sh.insert(h, key, token, exp, s.arenaMax)
			}
			if !ok {
				s.count.Add(-1)
				sh.mu.Unlock()
				return idempotency.ClaimResult{}, s.errArena()
			}
			if now >= sh.earliest && now-sh.swept >= sweepEvery {
				s.sweep(sh, now)
			}
			sh.mu.Unlock()
			return idempotency.ClaimResult{State: idempotency.StateClaimed}, nil
		}
		s.count.Add(-1)
		sh.mu.Unlock()
		// Others may take the room made before this claim comes back for
		// it; it then makes room again, until nothing expired is left.
		if !s.makeRoom() {
			return idempotency.ClaimResult{}, s.errFull
		}
	}
}

// Complete replaces token's live claim on key with record, which expires
// after expiry (zero: never). The store keeps a copy of record, so the
// caller may reuse its buffer. It returns [idempotency.ErrNotHeld], and
// changes nothing, when the key is not token's live claim, and an error for
// a negative expiry. It returns an error wrapping [ErrFull], and changes
// nothing, in the unlikely case that the record does not fit in the store
// (see [ErrFull]).
func (s *Store) Complete(_ context.Context, key, token string, record []byte, expiry time.Duration) error {
	if expiry < 0 {
		return fmt.Errorf("memory: complete with expiry %v: the expiry must not be negative", expiry)
	}
	h := s.hashOf(key)
	sh := s.shard(h)
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, _ := s.holds(sh, h, key, token, now)
	if i == none {
		return idempotency.ErrNotHeld
	}
	exp := int64(never)
	if expiry > 0 {
		exp = deadline(now, expiry)
	}
	ok := sh.complete(i, record, exp, s.arenaMax)
	if !ok && now >= sh.earliest {
		// Expired entries may make room in the arena; the claim is live,
		// so it stays in slot i.
		s.sweep(sh, now)
		ok = sh.complete(i, record, exp, s.arenaMax)
	}
	if !ok {
		return s.errArena()
	}
	sh.wake(key)
	return nil
}

// Release deletes token's live claim on key. It returns
// [idempotency.ErrNotHeld], and changes nothing, when the key is not token's
// live claim.
func (s *Store) Release(_ context.Context, key, token string) error {
	h := s.hashOf(key)
	sh := s.shard(h)
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, prev := s.holds(sh, h, key, token, now)
	if i == none {
		return idempotency.ErrNotHeld
	}
	s.remove(sh, h, i, prev, key)
	return nil
}

// Renew sets the lease of token's live claim on key to lease from now. It
// returns [idempotency.ErrNotHeld], and changes nothing, when the key is not
// token's live claim, and an error for a lease that is not positive.
func (s *Store) Renew(_ context.Context, key, token string, lease time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("memory: renew with lease %v: the lease must be positive", lease)
	}
	h := s.hashOf(key)
	sh := s.shard(h)
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, _ := s.holds(sh, h, key, token, now)
	if i == none {
		return idempotency.ErrNotHeld
	}
	exp := deadline(now, lease)
	sh.slots[i].exp = exp
	sh.earliest = min(sh.earliest, exp)
	return nil
}

// Wait blocks until the claim in flight on key is completed or released,
// its lease as it stood when Wait was called runs out, or ctx is done, in
// which case it returns ctx's error. It returns nil at once when the key
// holds no live claim. It does not poll: completing and releasing wake it.
func (s *Store) Wait(ctx context.Context, key string) error {
	h := s.hashOf(key)
	sh := s.shard(h)
	now := s.now()
	sh.mu.Lock()
	i, _ := s.live(sh, h, key, now)
	if i == none || sh.slots[i].done {
		sh.mu.Unlock()
		return nil
	}
	exp := sh.slots[i].exp
	ch, ok := sh.waits[key]
	if !ok {
		if sh.waits == nil {
			sh.waits = make(map[string]chan struct{})
		}
		ch = make(chan struct{})
		sh.waits[key] = ch
	}
	sh.mu.Unlock()

	// A lease that runs out wakes nobody, so the timer stands in for that
	// event. A renewal moves the deadline later; waking at the old one is
	// an early return, which the caller handles by claiming again.
	timer := time.NewTimer(time.Duration(exp - now))
	defer timer.Stop()
	select {
	case <-ch:
		return nil
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close releases the store. The store starts no goroutine and holds no
// outside resource, so there is nothing to stop: Close exists so that a
// Store can be closed like stores that do. It always returns nil and may be
// called more than once. The store stays usable.
func (s *Store) Close() error {
	return nil
}

// hashOf returns the hash of key, which picks its shard and its chain.
func (s *Store) hashOf(key string) uint64 {
	if s.hash != nil {
		return s.hash(key)
	}
	return maphash.String(s.seed, key)
}

// hashBytes returns the hash of a key held as bytes, the same as hashOf's.
func (s *Store) hashBytes(key []byte) uint64 {
	if s.hash != nil {
		return s.hash(string(key))
	}
	return maphash.Bytes(s.seed, key)
}

func (s *Store) shard(h uint64) *shard {
	return &s.shards[h%shardCount]
}

// errArena is the error of a key or record that its shard's arena cannot
// take.
func (s *Store) errArena() error {
	return fmt.Errorf("%w (the keys and records of one shard would exceed %d bytes)", ErrFull, s.arenaMax)
}

// now reads the store's clock: nanoseconds since New, from the monotonic
// clock.
func (s *Store) now() int64 {
	return int64(time.Since(s.base))
}

// deadline returns now+d, or never if that does not fit.
func deadline(now int64, d time.Duration) int64 {
	if int64(d) >= never-now {
		return never
	}
	return now + int64(d)
}

// live returns the slot of key, whose hash is h, if its lease or expiry
// has not passed, and the slot before it in its chain; or none. An expired
// slot is dropped on the way, as no one can see it anymore. The shard must
// be locked.
func (s *Store) live(sh *shard, h uint64, key string, now int64) (i, prev int32) {
	i, prev = sh.find(h, key)
	if i == none {
		return none, none
	}
	if now >= sh.slots[i].exp {
		s.remove(sh, h, i, prev, key)
		return none, none
	}
	return i, prev
}

// holds returns the slot of key if it is token's live claim, and the slot
// before it in its chain; or none. The shard must be locked.
func (s *Store) holds(sh *shard, h uint64, key, token string, now int64) (i, prev int32) {
	i, prev = s.live(sh, h, key, now)
	if i == none || sh.slots[i].done || !sh.holdsToken(&sh.slots[i], token) {
		return none, none
	}
	return i, prev
}

// remove deletes slot i, which holds key, whose hash is h, and follows
// prev in its chain. The shard must be locked.
func (s *Store) remove(sh *shard, h uint64, i, prev int32, key string) {
	sh.drop(h, i, prev)
	s.count.Add(-1)
	sh.wake(key)
	sh.compact()
}

// makeRoom drops expired entries, shard after shard, until the store has
// room for one more entry, and reports whether it has. It reports false
// only when it found the store full after looking at every shard, and so
// holding nothing that had expired when it began. Searches run
// concurrently, each from a shard of its own: one that finds a shard just
// swept by another goes on to the next.
func (s *Store) makeRoom() bool {
	now := s.now()
	start := s.cursor.Add(1)
	for i := range uint32(shardCount) {
		sh := &s.shards[(start+i)%shardCount]
		sh.mu.Lock()
		if now >= sh.earliest {
			s.sweep(sh, now)
		}
		sh.mu.Unlock()
		if s.count.Load() < s.max {
			return true
		}
	}
	return false
}

// sweep deletes the shard's expired entries and returns how many it
// deleted. It walks the slots, which hold no pointer and lie side by side,
// rather than the index. The shard must be locked.
func (s *Store) sweep(sh *shard, now int64) int {
	earliest := int64(never)
	freed := 0
	for i := range sh.slots {
		sl := &sh.slots[i]
		if sl.exp == 0 {
			continue
		}
		if now < sl.exp {
			earliest = min(earliest, sl.exp)
			continue
		}
		key := sh.key(sl)
		h := s.hashBytes(key)
		if !sl.done && len(sh.waits) > 0 {
			sh.wake(string(key))
		}
		sh.drop(h, int32(i), sh.prevOf(h, int32(i)))
		freed++
	}
	sh.earliest = earliest
	sh.swept = now
	s.count.Add(-int64(freed))
	// Compacted once, after the loop: a sweep may free many entries.
	sh.compact()
	return freed
}

// NonBlocking marks the store as one whose calls never wait on anything but
// a shard's lock, so the engine calls it without a timeout of its own.
func (*Store) NonBlocking() {}
