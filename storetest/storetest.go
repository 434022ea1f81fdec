package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

const (
	// shortTTL is the lease or expiry of the subtests that only wait for it
	// to run out.
	shortTTL = 300 * time.Millisecond
	// midTTL is the lease or expiry of the subtests that check that
	// something is still there, after a while, before waiting for it to run
	// out: long enough that those checks cannot come too late, on a busy
	// machine under -race too.
	midTTL = 3 * time.Second
	// longTTL never runs out during the suite.
	longTTL = 10 * time.Minute
	// patience is how long after its deadline a claim or record may still
	// be seen before the suite calls that a failure, and how long any call
	// that should return soon may take.
	patience = 5 * time.Second
	// pollEvery is the pause between two looks at a key that should go
	// away.
	pollEvery = 10 * time.Millisecond
	// huge is the longest duration there is: a store that cannot represent
	// it must make it as long as it can.
	huge = time.Duration(math.MaxInt64)
)

// Key returns a new random key, "storetest:" followed by 26 random
// characters, in the shape of the storage keys the engine uses. A test that
// makes its keys with Key never meets a key it did not create.
func Key() string {
	return "storetest:" + rand.Text()
}

// Run runs the conformance suite against the stores that newStore returns.
// newStore is called once per subtest, with that subtest's t; it should
// register the store's clean-up with t.Cleanup. The subtests run in
// parallel. See the package documentation for what they check.
func Run(t *testing.T, newStore func(t *testing.T) idempotency.Store) {
	t.Helper()
	st := suite{newStore: newStore}
	t.Run("ClaimFresh", st.claimFresh)
	t.Run("ClaimInFlight", st.claimInFlight)
	t.Run("ClaimAgainByHolder", st.claimAgainByHolder)
	t.Run("ClaimCompleted", st.claimCompleted)
	t.Run("ConcurrentClaims", st.concurrentClaims)
	t.Run("ConcurrentEnds", st.concurrentEnds)
	t.Run("WrongToken", st.wrongToken)
	t.Run("AfterComplete", st.afterComplete)
	t.Run("Release", st.release)
	t.Run("LeaseTakenOver", st.leaseTakenOver)
	t.Run("LeaseRanOut", st.leaseRanOut)
	t.Run("RenewExtends", st.renewExtends)
	t.Run("RenewShortens", st.renewShortens)
	t.Run("Expiry", st.expiry)
	t.Run("IndependentKeys", st.independentKeys)
	t.Run("HugeDurations", st.hugeDurations)
	t.Run("TinyDurations", st.tinyDurations)
	t.Run("Wait", st.wait)
	t.Run("Inspect", st.inspect)
	t.Run("Forget", st.forget)
	t.Run("Count", st.count)
}

// suite holds what the subtests share. Each subtest is a method, so that a
// failure points at the line in it that failed.
type suite struct {
	newStore func(t *testing.T) idempotency.Store
}

// start marks t as parallel and returns the store of its subtest.
func (st suite) start(t *testing.T) idempotency.Store {
	t.Helper()
	t.Parallel()
	return st.newStore(t)
}

func (st suite) claimFresh(t *testing.T) {
	s := st.start(t)
	res := claim(t, s, Key(), newToken(), longTTL)
	assert.Equal(t, idempotency.StateClaimed, res.State)
}

// claimAgainByHolder: a claim sent again with its own token, as a client
// library does when the first answer was lost, is claimed again, and the
// claim still answers to that token.
func (st suite) claimAgainByHolder(t *testing.T) {
	s := st.start(t)
	key := Key()
	token := holdClaim(t, s, key, longTTL)
	res := claim(t, s, key, token, longTTL)
	require.Equal(t, idempotency.StateClaimed, res.State)
	assertInFlight(t, s, key)
	require.NoError(t, s.Complete(t.Context(), key, token, recordOf(1), longTTL))
	res = claim(t, s, key, token, longTTL)
	assert.Equal(t, idempotency.StateCompleted, res.State, "a completed key is never claimed again")
}

func (st suite) claimInFlight(t *testing.T) {
	s := st.start(t)
	key := Key()
	holdClaim(t, s, key, longTTL)
	res := claim(t, s, key, newToken(), longTTL)
	require.Equal(t, idempotency.StateInFlight, res.State)
	assert.GreaterOrEqual(t, res.LeaseLeft, time.Duration(0), "lease left")
	assert.LessOrEqual(t, res.LeaseLeft, longTTL, "lease left")
	if res.LeaseLeft != 0 {
		// Zero means the store cannot tell; any other value must be close
		// to the whole lease, which has only just begun.
		assert.Greater(t, res.LeaseLeft, longTTL/2, "lease left")
	}
}

func (st suite) claimCompleted(t *testing.T) {
	s := st.start(t)
	large := make([]byte, 2<<20)
	_, _ = rand.Read(large)
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	tests := []struct {
		name   string
		record []byte
	}{
		{name: "json", record: []byte(`{"status":201,"body":"eyJpZCI6NDJ9"}`)},
		{name: "one byte", record: []byte{'x'}},
		{name: "zero bytes", record: []byte{0, 0, 'a', 0, 'b', 0}},
		{name: "invalid utf-8", record: []byte{0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0}},
		{name: "every byte value", record: allBytes},
		{name: "2 MiB of random bytes", record: large},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			token := holdClaim(t, s, key, longTTL)
			// The caller may reuse its buffer once Complete returns: the
			// store must not keep it.
			buf := bytes.Clone(tt.record)
			require.NoError(t, s.Complete(t.Context(), key, token, buf, longTTL))
			for i := range buf {
				buf[i] = '!'
			}
			assertCompleted(t, s, key, tt.record)
			assertCompleted(t, s, key, tt.record) // reading does not consume
		})
	}
}

func (st suite) concurrentClaims(t *testing.T) {
	s := st.start(t)
	const n = 100
	key := Key()
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = newToken()
	}
	results := make([]idempotency.ClaimResult, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = s.Claim(t.Context(), key, tokens[i], longTTL)
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	var claimed, inFlight int
	for i, res := range results {
		require.NoError(t, errs[i], "Claim %d", i)
		switch res.State {
		case idempotency.StateClaimed:
			claimed++
			winner = i
		case idempotency.StateInFlight:
			inFlight++
		}
	}
	assert.Equal(t, 1, claimed, "claims that got the key")
	assert.Equal(t, n-1, inFlight, "claims that found it in flight")
	if claimed == 1 {
		// The claim the store kept is the winner's.
		record := []byte("winner")
		assert.NoError(t, s.Complete(t.Context(), key, tokens[winner], record, longTTL))
		assertCompleted(t, s, key, record)
	}
}

// concurrentEnds checks that of many concurrent completions and releases
// of one claim, by its holder, exactly one takes effect.
func (st suite) concurrentEnds(t *testing.T) {
	s := st.start(t)
	const n = 20 // half complete, half release
	key := Key()
	token := holdClaim(t, s, key, longTTL)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			if i%2 == 0 {
				errs[i] = s.Complete(t.Context(), key, token, recordOf(i), longTTL)
			} else {
				errs[i] = s.Release(t.Context(), key, token)
			}
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		if err == nil {
			assert.Equal(t, -1, winner, "calls %d and %d both succeeded", winner, i)
			winner = i
			continue
		}
		assert.ErrorIs(t, err, idempotency.ErrNotHeld, "call %d", i)
	}
	require.NotEqual(t, -1, winner, "no call succeeded")
	if winner%2 == 0 {
		assertCompleted(t, s, key, recordOf(winner))
	} else {
		assertClaimable(t, s, key)
	}
}

// The operations that only the holder of a live claim may perform, for the
// subtests that check that nobody else can.
var holderOps = []struct {
	name string
	op   func(ctx context.Context, s idempotency.Store, key, token string) error
	// extends says that op, if it wrongly succeeded, would keep a claim
	// alive for long; shortens, that it would end a claim or a record soon.
	// The subtests wait to see either.
	extends, shortens bool
}{
	{name: "Complete", op: func(ctx context.Context, s idempotency.Store, key, token string) error {
		return s.Complete(ctx, key, token, []byte("intruder"), longTTL)
	}},
	{name: "Release", op: func(ctx context.Context, s idempotency.Store, key, token string) error {
		return s.Release(ctx, key, token)
	}},
	{name: "Renew long", extends: true, op: func(ctx context.Context, s idempotency.Store, key, token string) error {
		return s.Renew(ctx, key, token, longTTL)
	}},
	{name: "Renew short", shortens: true, op: func(ctx context.Context, s idempotency.Store, key, token string) error {
		return s.Renew(ctx, key, token, shortTTL/3)
	}},
}

// wrongToken checks that Complete, Release and Renew with a token that
// does not hold the key return ErrNotHeld and change nothing, whatever the
// key holds.
func (st suite) wrongToken(t *testing.T) {
	s := st.start(t)
	for _, op := range holderOps {
		t.Run(op.name, func(t *testing.T) {
			t.Parallel()
			t.Run("absent key", func(t *testing.T) {
				t.Parallel()
				key := Key()
				assert.ErrorIs(t, op.op(t.Context(), s, key, newToken()), idempotency.ErrNotHeld)
				assertClaimable(t, s, key)
			})
			t.Run("claimed key", func(t *testing.T) {
				t.Parallel()
				key := Key()
				if op.extends {
					holdClaim(t, s, key, shortTTL)
					assert.ErrorIs(t, op.op(t.Context(), s, key, newToken()), idempotency.ErrNotHeld)
					// Not extended: the claim runs out with its own lease.
					awaitClaimable(t, s, key, shortTTL)
					return
				}
				holder := holdClaim(t, s, key, midTTL)
				assert.ErrorIs(t, op.op(t.Context(), s, key, newToken()), idempotency.ErrNotHeld)
				assertInFlight(t, s, key)
				if op.shortens {
					awaitTimePassed(t, s, shortTTL)
					assertInFlight(t, s, key)
				}
				// Still the holder's claim.
				record := []byte("the holder's record")
				require.NoError(t, s.Complete(t.Context(), key, holder, record, longTTL))
				assertCompleted(t, s, key, record)
			})
			t.Run("completed key", func(t *testing.T) {
				t.Parallel()
				key := Key()
				token := holdClaim(t, s, key, longTTL)
				record := []byte("the holder's record")
				require.NoError(t, s.Complete(t.Context(), key, token, record, longTTL))
				assert.ErrorIs(t, op.op(t.Context(), s, key, newToken()), idempotency.ErrNotHeld)
				assertCompleted(t, s, key, record)
				if op.shortens {
					awaitTimePassed(t, s, shortTTL)
					assertCompleted(t, s, key, record)
				}
			})
		})
	}
}

// afterComplete checks that once a claim is completed, its own holder
// can no longer complete, release or renew it: in particular, a late renewal
// cannot shorten the record's expiry.
func (st suite) afterComplete(t *testing.T) {
	s := st.start(t)
	for _, op := range holderOps {
		t.Run(op.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			token := holdClaim(t, s, key, longTTL)
			record := []byte("first")
			require.NoError(t, s.Complete(t.Context(), key, token, record, longTTL))
			assert.ErrorIs(t, op.op(t.Context(), s, key, token), idempotency.ErrNotHeld)
			assertCompleted(t, s, key, record)
			if op.shortens {
				awaitTimePassed(t, s, shortTTL)
				assertCompleted(t, s, key, record)
			}
		})
	}
}

func (st suite) release(t *testing.T) {
	s := st.start(t)
	key := Key()
	token := holdClaim(t, s, key, longTTL)
	require.NoError(t, s.Release(t.Context(), key, token))
	next := holdClaim(t, s, key, longTTL) // claimable again, at once

	// The released token holds nothing anymore.
	assert.ErrorIs(t, s.Release(t.Context(), key, token), idempotency.ErrNotHeld, "second Release")
	assert.ErrorIs(t, s.Complete(t.Context(), key, token, []byte("late"), longTTL), idempotency.ErrNotHeld, "Complete after Release")
	assertInFlight(t, s, key)
	record := []byte("next")
	require.NoError(t, s.Complete(t.Context(), key, next, record, longTTL))
	assertCompleted(t, s, key, record)
}

// leaseTakenOver checks that a holder whose lease ran out and whose key
// another token claimed since can neither complete, release nor renew it,
// and leaves the new holder's claim as it was.
func (st suite) leaseTakenOver(t *testing.T) {
	s := st.start(t)
	for _, op := range holderOps {
		t.Run(op.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			old := holdClaim(t, s, key, shortTTL)
			next := awaitClaimable(t, s, key, shortTTL)
			assert.ErrorIs(t, op.op(t.Context(), s, key, old), idempotency.ErrNotHeld)
			assertInFlight(t, s, key)
			record := []byte("the new holder's record")
			require.NoError(t, s.Complete(t.Context(), key, next, record, longTTL))
			assertCompleted(t, s, key, record)
		})
	}
}

// leaseRanOut checks that a claim whose lease ran out is gone even when
// nobody claimed the key since: its former holder can neither complete,
// release nor renew it.
func (st suite) leaseRanOut(t *testing.T) {
	s := st.start(t)
	for _, op := range holderOps {
		t.Run(op.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			old := holdClaim(t, s, key, shortTTL)
			// Claimed after key with the same lease, the probe runs out
			// after it: once the probe is gone, so is key's claim, by the
			// store's own clock.
			probe := Key()
			holdClaim(t, s, probe, shortTTL)
			awaitClaimable(t, s, probe, shortTTL)
			assert.ErrorIs(t, op.op(t.Context(), s, key, old), idempotency.ErrNotHeld)
			assertClaimable(t, s, key)
		})
	}
}

// renewExtends renews a claim, as the engine does while the handler
// runs, for twice its lease, and checks that it stayed in flight throughout
// and runs out once the renewals stop.
func (st suite) renewExtends(t *testing.T) {
	s := st.start(t)
	// Renewed every quarter of it: a renewal may come more than a second
	// late, as on a busy machine under -race, and still be in time.
	const lease = 2 * time.Second
	key := Key()
	start := time.Now()
	token := holdClaim(t, s, key, lease)
	ticker := time.NewTicker(lease / 4)
	defer ticker.Stop()
	for time.Since(start) < 2*lease {
		<-ticker.C
		require.NoError(t, s.Renew(t.Context(), key, token, lease), "Renew after %v", time.Since(start))
	}
	res := claim(t, s, key, newToken(), longTTL)
	assert.Equal(t, idempotency.StateInFlight, res.State, "twice the lease after the claim")
	assert.LessOrEqual(t, res.LeaseLeft, lease, "lease left")
	awaitClaimable(t, s, key, lease)
}

// renewShortens checks that Renew sets the lease, not merely extends it.
func (st suite) renewShortens(t *testing.T) {
	s := st.start(t)
	key := Key()
	token := holdClaim(t, s, key, longTTL)
	require.NoError(t, s.Renew(t.Context(), key, token, shortTTL))
	awaitClaimable(t, s, key, shortTTL)
}

func (st suite) expiry(t *testing.T) {
	s := st.start(t)
	forever := Key()
	record := []byte("kept forever")
	token := holdClaim(t, s, forever, longTTL)
	require.NoError(t, s.Complete(t.Context(), forever, token, record, 0))

	key := Key()
	expiring := []byte("kept for a while")
	token = holdClaim(t, s, key, longTTL)
	require.NoError(t, s.Complete(t.Context(), key, token, expiring, midTTL))
	assertCompleted(t, s, key, expiring)
	awaitClaimable(t, s, key, midTTL)

	// Completed before key, without expiry, forever outlives it.
	assertCompleted(t, s, forever, record)
	awaitTimePassed(t, s, shortTTL)
	assertCompleted(t, s, forever, record)
}

func (st suite) independentKeys(t *testing.T) {
	s := st.start(t)
	key := Key()
	longer := key + "x" // a key that begins with the other
	other := Key()
	token := newToken()

	// One token may hold several keys; what it does to one leaves the
	// others alone.
	res := claim(t, s, key, token, longTTL)
	require.Equal(t, idempotency.StateClaimed, res.State)
	res = claim(t, s, longer, token, longTTL)
	require.Equal(t, idempotency.StateClaimed, res.State)
	assert.ErrorIs(t, s.Complete(t.Context(), other, token, []byte("other"), longTTL), idempotency.ErrNotHeld, "Complete of a key the token does not hold")

	record := []byte("key's record")
	require.NoError(t, s.Complete(t.Context(), key, token, record, longTTL))
	assertInFlight(t, s, longer)
	require.NoError(t, s.Release(t.Context(), longer, token))
	assertCompleted(t, s, key, record)
	assertClaimable(t, s, longer)
	assertClaimable(t, s, other)
}

// hugeDurations checks that the longest lease and expiry there are work:
// a store saturates what it cannot represent, and never fails the call or
// ends the claim or record early for it.
func (st suite) hugeDurations(t *testing.T) {
	s := st.start(t)
	tests := []struct {
		name string
		// lease is the claim's first lease; renew, when not zero, the
		// lease that Renew then sets; expiry, when not zero, the expiry
		// with which the claim is then completed.
		lease, renew, expiry time.Duration
	}{
		{name: "lease", lease: huge},
		{name: "renew a long lease", lease: huge, renew: huge},
		{name: "renew a short lease", lease: shortTTL, renew: huge},
		{name: "expiry", lease: shortTTL, expiry: huge},
		{name: "expiry after a huge lease", lease: huge, renew: huge, expiry: huge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			token := holdClaim(t, s, key, tt.lease)
			if tt.renew != 0 {
				require.NoError(t, s.Renew(t.Context(), key, token, tt.renew), "Renew")
			}
			record := []byte("kept for ages")
			if tt.expiry != 0 {
				require.NoError(t, s.Complete(t.Context(), key, token, record, tt.expiry), "Complete")
				assertCompleted(t, s, key, record)
				awaitTimePassed(t, s, shortTTL)
				assertCompleted(t, s, key, record)
				return
			}
			res := claim(t, s, key, newToken(), longTTL)
			require.Equal(t, idempotency.StateInFlight, res.State, "state of a key claimed for ages")
			assert.GreaterOrEqual(t, res.LeaseLeft, time.Duration(0), "lease left")
			if res.LeaseLeft != 0 {
				assert.Greater(t, res.LeaseLeft, longTTL, "lease left")
			}
			// Long after the first lease, the claim is still there, and
			// still the holder's.
			awaitTimePassed(t, s, shortTTL)
			assertInFlight(t, s, key)
			require.NoError(t, s.Complete(t.Context(), key, token, record, longTTL), "Complete")
			assertCompleted(t, s, key, record)
		})
	}
}

// tinyDurations checks that a lease or expiry of one nanosecond, shorter
// than most stores can represent, is accepted, and runs out soon.
func (st suite) tinyDurations(t *testing.T) {
	s := st.start(t)
	t.Run("lease", func(t *testing.T) {
		t.Parallel()
		key := Key()
		holdClaim(t, s, key, time.Nanosecond)
		awaitClaimable(t, s, key, time.Nanosecond)
	})
	t.Run("renew", func(t *testing.T) {
		t.Parallel()
		key := Key()
		token := holdClaim(t, s, key, longTTL)
		require.NoError(t, s.Renew(t.Context(), key, token, time.Nanosecond), "Renew")
		awaitClaimable(t, s, key, time.Nanosecond)
	})
	t.Run("expiry", func(t *testing.T) {
		t.Parallel()
		key := Key()
		token := holdClaim(t, s, key, longTTL)
		require.NoError(t, s.Complete(t.Context(), key, token, []byte("brief"), time.Nanosecond), "Complete")
		awaitClaimable(t, s, key, time.Nanosecond)
	})
}

// newToken returns a random token of 130 bits, as long as the engine's.
func newToken() string {
	return rand.Text()
}

func recordOf(i int) []byte {
	return []byte{'r', 'e', 'c', 'o', 'r', 'd', byte(i)}
}

func claim(t *testing.T, s idempotency.Store, key, token string, lease time.Duration) idempotency.ClaimResult {
	t.Helper()
	res, err := s.Claim(t.Context(), key, token, lease)
	require.NoError(t, err, "Claim")
	return res
}

// holdClaim claims key, which must be claimable, and returns the token that
// holds it.
func holdClaim(t *testing.T, s idempotency.Store, key string, lease time.Duration) string {
	t.Helper()
	token := newToken()
	res := claim(t, s, key, token, lease)
	require.Equal(t, idempotency.StateClaimed, res.State, "claiming a fresh key")
	return token
}

func assertInFlight(t *testing.T, s idempotency.Store, key string) bool {
	t.Helper()
	res := claim(t, s, key, newToken(), longTTL)
	return assert.Equal(t, idempotency.StateInFlight, res.State, "state of a key with a live claim")
}

func assertCompleted(t *testing.T, s idempotency.Store, key string, want []byte) bool {
	t.Helper()
	res := claim(t, s, key, newToken(), longTTL)
	return assert.Equal(t, idempotency.StateCompleted, res.State, "state of a completed key") &&
		assert.Equal(t, want, res.Record, "record")
}

// assertClaimable checks that key holds nothing: a new token claims it.
func assertClaimable(t *testing.T, s idempotency.Store, key string) bool {
	t.Helper()
	res := claim(t, s, key, newToken(), longTTL)
	return assert.Equal(t, idempotency.StateClaimed, res.State, "state of a key that should hold nothing")
}

// awaitClaimable claims key as soon as it holds nothing anymore, and returns
// the token that then holds it. It fails t if key still holds something
// patience after ttl, the lease or expiry of what it held, has passed.
func awaitClaimable(t *testing.T, s idempotency.Store, key string, ttl time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(ttl + patience)
	for {
		token := newToken()
		res := claim(t, s, key, token, longTTL)
		if res.State == idempotency.StateClaimed {
			return token
		}
		if time.Now().After(deadline) {
			require.Failf(t, "key never became claimable",
				"still %v %v after a lease or expiry of %v", res.State, patience, ttl)
		}
		time.Sleep(pollEvery)
	}
}

// awaitTimePassed returns once at least d has passed by the store's clock.
// It claims a probe key with a lease of d and waits for that to run out.
func awaitTimePassed(t *testing.T, s idempotency.Store, d time.Duration) {
	t.Helper()
	probe := Key()
	holdClaim(t, s, probe, d)
	awaitClaimable(t, s, probe, d)
}
