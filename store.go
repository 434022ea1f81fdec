package idempotency

import (
	"context"
	"errors"
	"time"
)

// State is what [Store.Claim] found under a storage key.
type State uint8

const (
	// StateClaimed means the caller now holds the claim: it must run the
	// handler and then call [Store.Complete] or [Store.Release].
	StateClaimed State = iota + 1
	// StateInFlight means another caller holds a live claim on the key.
	StateInFlight
	// StateCompleted means the key holds a completed record.
	StateCompleted
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case StateClaimed:
		return "claimed"
	case StateInFlight:
		return "in-flight"
	case StateCompleted:
		return "completed"
	default:
		return "unknown"
	}
}

// ClaimResult is the answer of [Store.Claim].
type ClaimResult struct {
	// State says whether the key was claimed, is in flight or is completed.
	State State
	// LeaseLeft is how long the other caller's claim has left, for
	// [StateInFlight]. It is zero when the store cannot tell.
	LeaseLeft time.Duration
	// Record is the completed record, for [StateCompleted]. The caller must
	// not modify it: a store may hand the same slice to many callers. The
	// store must not modify it either once returned: the caller may keep it.
	Record []byte
}

// ErrNotHeld is returned by [Store.Complete], [Store.Release] and
// [Store.Renew] when the key is not, or no longer, a live claim of the given
// token: its lease ran out, another caller claimed it since, or it was
// completed or released. The call changed nothing.
var ErrNotHeld = errors.New("idempotency: claim not held")

// Store keeps claims and completed records under storage keys. The engine
// hands it storage keys that are already hashed (they never contain a
// client's raw key) and random tokens of at least 128 bits.
//
// A record is either a claim (a token with a lease) or a completed record
// (opaque bytes with an expiry). Implementations must be safe for concurrent
// use, and every method must be atomic with respect to the others, across
// every process that shares the store. The package storetest checks all of
// this; every Store should pass it.
type Store interface {
	// Claim claims key for token with the given lease, if the key holds
	// neither a live claim nor a completed record. Otherwise it reports what
	// the key holds. A claim whose lease ran out counts as absent. A key
	// that already holds this token's live claim answers [StateClaimed]
	// again, so that a claim whose answer was lost on the way and is sent
	// again is not taken for another caller's. A networked store answers in
	// one round trip.
	Claim(ctx context.Context, key, token string, lease time.Duration) (ClaimResult, error)

	// Complete replaces token's live claim on key with record, which then
	// expires after expiry (zero: never). It returns [ErrNotHeld], and
	// changes nothing, when the key is not token's live claim.
	Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error

	// Release deletes token's live claim on key, so that the next request
	// claims it anew. It returns [ErrNotHeld], and changes nothing, when the
	// key is not token's live claim; it never deletes a completed record.
	Release(ctx context.Context, key, token string) error

	// Renew sets the lease of token's live claim on key to lease from now.
	// It returns [ErrNotHeld], and changes nothing, when the key is not
	// token's live claim; it never touches a completed record.
	Renew(ctx context.Context, key, token string, lease time.Duration) error
}

// Waiter is an optional capability of a [Store]: it lets a duplicate request
// wait for an in-flight claim to end without polling. The engine uses it
// when [WithWait] is set; for a store without it, the engine polls.
type Waiter interface {
	// Wait blocks until the claim on key that was in flight may have ended
	// (completed, released or expired), or until ctx is done, in which case
	// it returns ctx's error. It may return nil early; the caller calls
	// [Store.Claim] again to learn what the key holds. It returns at once
	// when the key holds no live claim.
	Wait(ctx context.Context, key string) error
}

// NonBlocking is an optional marker of a [Store] whose calls never wait on
// anything but a short lock, such as an in-process store. The engine then
// calls it without arming a timeout for each call ([WithStoreTimeout]),
// which costs more than such a call itself.
type NonBlocking interface {
	NonBlocking()
}

// Inspector is an optional capability of a [Store]: it tells what a storage
// key holds, for operators and tools such as cmd/idemctl. A store without it
// still conforms. The storage key is the one [StorageKey] derives from a
// request's scope, route and key.
type Inspector interface {
	// Inspect reports what key holds. An absent key, and a claim or record
	// whose lease or expiry ran out, answer an [Entry] whose State is zero.
	Inspect(ctx context.Context, key string) (Entry, error)
}

// Forgetter is an optional capability of a [Store]: it removes whatever a
// storage key holds, a live claim (which frees a key whose holder is stuck)
// or a completed record, so that the next request with the key runs anew.
type Forgetter interface {
	// Forget deletes key's claim or record. It reports whether there was a
	// live one to delete.
	Forget(ctx context.Context, key string) (bool, error)
}

// Counter is an optional capability of a [Store] that can count what it
// holds without reading every record.
type Counter interface {
	// Count returns how many live claims and unexpired records the store
	// holds. A store may count an entry that expires while it counts.
	Count(ctx context.Context) (Counts, error)
}

// Entry is what [Inspector.Inspect] found under a storage key.
type Entry struct {
	// State is [StateInFlight] for a live claim, [StateCompleted] for a
	// record, and zero when the key holds nothing.
	State State
	// TTL is the lease left of a claim, or the time left of a record; zero
	// for a record that never expires.
	TTL time.Duration
	// Record is the stored record, for [StateCompleted]. See [DecodeRecord]
	// for its contents.
	Record []byte
}

// Counts is what [Counter.Count] reports.
type Counts struct {
	// Claims is the number of live claims: requests in flight.
	Claims int64
	// Records is the number of completed records that have not expired.
	Records int64
}
