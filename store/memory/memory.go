package memory

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/idemkey/idempotency"
)

// ErrFull is the error, wrapped, that [Store.Claim] returns when the store
// holds [WithMaxRecords] live claims and unexpired records and so cannot take
// a new claim. It is a store failure: the engine answers it as one (503 /
// CodeUnavailable, or runs the handler unprotected when it fails open).
var ErrFull = errors.New("memory: store is full")

const (
	defaultMaxRecords = 100_000

	// shardCount spreads keys over this many independently locked maps, so
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
	base    time.Time // origin of the store's monotonic clock
	seed    maphash.Seed
	max     int64
	errFull error
	count   atomic.Int64  // entries held, expired or not, in all shards
	cursor  atomic.Uint32 // shard where the next search for room starts
	shards  [shardCount]shard
}

type shard struct {
	shardState
	// Padding keeps two shards' locks off one cache line, so that cores
	// working on different shards do not slow each other down.
	_ [128 - unsafe.Sizeof(shardState{})%128]byte
}

type shardState struct {
	mu      sync.Mutex
	entries map[string]entry
	// waits holds a channel for each in-flight key that someone waits on;
	// it is closed when the claim ends. Created on first use: most stores
	// never see a waiter.
	waits map[string]chan struct{}
	// earliest is at most the earliest deadline of the shard's entries:
	// before it, a sweep would find nothing.
	earliest int64
	// swept is when the shard was last swept.
	swept int64
}

// entry is a claim or a completed record. It is kept small, and free of
// fields that only one kind uses, because a store holds many of them.
type entry struct {
	// val is the token of a claim, or the bytes of a completed record,
	// which a string holds in 8 bytes less than a slice.
	val string
	// exp is when the lease or the record ends, in nanoseconds of the
	// store's clock, or never.
	exp  int64
	done bool // a completed record, not a claim
}

// record returns a completed record's bytes without copying them. Callers
// of [Store.Claim] must not modify a record, so sharing is safe.
func (e entry) record() []byte {
	if len(e.val) == 0 {
		return []byte{}
	}
	return unsafe.Slice(unsafe.StringData(e.val), len(e.val))
}

// New returns an empty store configured by opts. It starts no goroutine.
func New(opts ...Option) *Store {
	s := &Store{
		base: time.Now(),
		seed: maphash.MakeSeed(),
		max:  defaultMaxRecords,
	}
	for _, opt := range opts {
		opt.apply(s)
	}
	s.errFull = fmt.Errorf("%w (%d records)", ErrFull, s.max)
	for i := range s.shards {
		s.shards[i].entries = make(map[string]entry)
		s.shards[i].earliest = never
	}
	return s
}

// Claim claims key for token with the given lease, if the key holds neither
// a live claim nor an unexpired record; otherwise it reports what the key
// holds. The record of a [idempotency.StateCompleted] result is the store's
// own copy, shared with every other caller: it must not be modified.
//
// When the store is full, Claim first drops expired entries and, if that
// frees nothing, returns an error wrapping [ErrFull]. It returns an error
// too for a lease that is not positive. It never blocks on ctx.
func (s *Store) Claim(_ context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	if lease <= 0 {
		return idempotency.ClaimResult{}, fmt.Errorf("memory: claim with lease %v: the lease must be positive", lease)
	}
	sh := s.shard(key)
	for retried := false; ; retried = true {
		now := s.now()
		sh.mu.Lock()
		if e, ok := s.live(sh, key, now); ok {
			sh.mu.Unlock()
			if !e.done && e.val == token {
				return idempotency.ClaimResult{State: idempotency.StateClaimed}, nil
			}
			if e.done {
				return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: e.record()}, nil
			}
			return idempotency.ClaimResult{State: idempotency.StateInFlight, LeaseLeft: time.Duration(e.exp - now)}, nil
		}
		if s.count.Add(1) <= s.max {
			sh.put(key, entry{val: token, exp: deadline(now, lease)})
			if now >= sh.earliest && now-sh.swept >= sweepEvery {
				s.sweep(sh, now)
			}
			sh.mu.Unlock()
			return idempotency.ClaimResult{State: idempotency.StateClaimed}, nil
		}
		s.count.Add(-1)
		sh.mu.Unlock()
		if retried || !s.makeRoom(now) {
			return idempotency.ClaimResult{}, s.errFull
		}
	}
}

// Complete replaces token's live claim on key with record, which expires
// after expiry (zero: never). The store keeps a copy of record, so the
// caller may reuse its buffer. It returns [idempotency.ErrNotHeld], and
// changes nothing, when the key is not token's live claim, and an error for
// a negative expiry.
func (s *Store) Complete(_ context.Context, key, token string, record []byte, expiry time.Duration) error {
	if expiry < 0 {
		return fmt.Errorf("memory: complete with expiry %v: the expiry must not be negative", expiry)
	}
	// Copied before locking, to keep the allocation out of the shard's
	// critical section.
	val := string(record)
	sh := s.shard(key)
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !s.holds(sh, key, token, now) {
		return idempotency.ErrNotHeld
	}
	exp := int64(never)
	if expiry > 0 {
		exp = deadline(now, expiry)
	}
	sh.put(key, entry{val: val, exp: exp, done: true})
	sh.wake(key)
	return nil
}

// Release deletes token's live claim on key. It returns
// [idempotency.ErrNotHeld], and changes nothing, when the key is not token's
// live claim.
func (s *Store) Release(_ context.Context, key, token string) error {
	sh := s.shard(key)
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !s.holds(sh, key, token, now) {
		return idempotency.ErrNotHeld
	}
	delete(sh.entries, key)
	s.count.Add(-1)
	sh.wake(key)
	return nil
}

// Renew sets the lease of token's live claim on key to lease from now. It
// returns [idempotency.ErrNotHeld], and changes nothing, when the key is not
// token's live claim, and an error for a lease that is not positive.
func (s *Store) Renew(_ context.Context, key, token string, lease time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("memory: renew with lease %v: the lease must be positive", lease)
	}
	sh := s.shard(key)
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !s.holds(sh, key, token, now) {
		return idempotency.ErrNotHeld
	}
	sh.put(key, entry{val: token, exp: deadline(now, lease)})
	return nil
}

// Wait blocks until the claim in flight on key is completed or released,
// its lease as it stood when Wait was called runs out, or ctx is done, in
// which case it returns ctx's error. It returns nil at once when the key
// holds no live claim. It does not poll: completing and releasing wake it.
func (s *Store) Wait(ctx context.Context, key string) error {
	sh := s.shard(key)
	now := s.now()
	sh.mu.Lock()
	e, ok := s.live(sh, key, now)
	if !ok || e.done {
		sh.mu.Unlock()
		return nil
	}
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
	timer := time.NewTimer(time.Duration(e.exp - now))
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

func (s *Store) shard(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)%shardCount]
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

// live returns key's entry if its lease or expiry has not passed. An
// expired entry is deleted on the way, as no one can see it anymore. The
// shard must be locked.
func (s *Store) live(sh *shard, key string, now int64) (entry, bool) {
	e, ok := sh.entries[key]
	if !ok {
		return entry{}, false
	}
	if now >= e.exp {
		delete(sh.entries, key)
		s.count.Add(-1)
		sh.wake(key)
		return entry{}, false
	}
	return e, true
}

// holds reports whether key is token's live claim. The shard must be
// locked.
func (s *Store) holds(sh *shard, key, token string, now int64) bool {
	e, ok := s.live(sh, key, now)
	return ok && !e.done && e.val == token
}

// makeRoom drops expired entries from the shards, one after another, until
// one of them frees some. It reports whether the store has room now.
func (s *Store) makeRoom(now int64) bool {
	start := s.cursor.Add(1)
	for i := range uint32(shardCount) {
		sh := &s.shards[(start+i)%shardCount]
		sh.mu.Lock()
		freed := 0
		if now >= sh.earliest {
			freed = s.sweep(sh, now)
		}
		sh.mu.Unlock()
		if freed > 0 {
			break
		}
	}
	return s.count.Load() < s.max
}

// sweep deletes the shard's expired entries and returns how many it
// deleted. The shard must be locked.
func (s *Store) sweep(sh *shard, now int64) int {
	earliest := int64(never)
	freed := 0
	for key, e := range sh.entries {
		if now >= e.exp {
			delete(sh.entries, key)
			sh.wake(key)
			freed++
			continue
		}
		earliest = min(earliest, e.exp)
	}
	sh.earliest = earliest
	sh.swept = now
	s.count.Add(-int64(freed))
	return freed
}

// put sets key's entry. The shard must be locked.
func (sh *shard) put(key string, e entry) {
	sh.entries[key] = e
	sh.earliest = min(sh.earliest, e.exp)
}

// wake wakes whoever waits on key's claim, which has ended. The shard must
// be locked.
func (sh *shard) wake(key string) {
	if len(sh.waits) == 0 {
		return
	}
	if ch, ok := sh.waits[key]; ok {
		close(ch)
		delete(sh.waits, key)
	}
}

// NonBlocking marks the store as one whose calls never wait on anything but
// a shard's lock, so the engine calls it without a timeout of its own.
func (*Store) NonBlocking() {}
