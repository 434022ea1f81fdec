// Package storetest is the conformance suite for [idempotency.Store]
// implementations. Every store of this module passes it, and a store written
// elsewhere should too: the engine relies on nothing that the suite does not
// check.
//
// Run it from a test of the store's package, with a function that returns a
// ready store:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) idempotency.Store {
//			t.Helper()
//			s := mystore.New(...)
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// [Run] calls the function once for each subtest, and the subtests run in
// parallel, so the stores it returns may share a backend: every subtest uses
// keys of its own, made by [Key], and touches no other key.
//
// The suite checks:
//
//   - Claim: a fresh key is claimed; a claimed key is in flight for another
//     token, with a plausible lease left; a completed key returns the exact
//     record bytes, binary ones and records of 2 MiB included. The store
//     keeps its own copy of a record: the caller may reuse its buffer.
//   - Atomicity: of many concurrent claims of one key, exactly one succeeds,
//     and of many concurrent completions of one claim, exactly one succeeds.
//   - The token: Complete, Release and Renew succeed only for the live
//     claim's own token, and otherwise return [idempotency.ErrNotHeld] and
//     change nothing. They never touch a completed record, and they never
//     create one for a key that holds nothing.
//   - Leases: a claim whose lease ran out is gone, whether or not another
//     token has claimed the key since; its former holder can then neither
//     complete, release nor renew it. Renew keeps a claim alive beyond its
//     first lease, and sets the lease rather than only extending it.
//   - Expiry: a record goes away after its expiry, and a record completed
//     with expiry zero stays.
//   - Durations: a lease or expiry of [math.MaxInt64] (longer than a
//     store may represent) is accepted and lasts, for Claim, Renew and
//     Complete alike; one of a nanosecond (shorter than a store may
//     represent) is accepted and runs out soon.
//   - Keys are independent of each other, even when one is a prefix of the
//     other.
//   - [idempotency.Waiter], when the store implements it (the subtests are
//     skipped otherwise): Wait returns at once for a key without a live
//     claim; it returns after the claim is completed or released or its lease
//     runs out, not before; and it returns the context's error when the
//     context ends first.
//   - [idempotency.Inspector], [idempotency.Forgetter] and
//     [idempotency.Counter], each when the store implements it: Inspect
//     shows nothing for an absent or expired key, a live claim with a
//     plausible lease left, and a record with its bytes and its time left
//     (zero when it never expires), and changes nothing. Forget reports
//     false for a key that holds nothing; after it forgets a claim or a
//     record, the next claim succeeds, and a forgotten claim's holder can
//     no longer complete, release or renew it; it wakes a waiter. Count
//     grows by at least the claims and records the subtest adds (stores may
//     share a backend with subtests running at the same time).
//
// The suite runs in real time, because a networked store has no clock that a
// test could move: leases and expiries are a few hundred milliseconds, and
// the checks leave wide margins, so that the suite stays reliable under the
// race detector on a busy machine. It takes a few seconds.
package storetest
