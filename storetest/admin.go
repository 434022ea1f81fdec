package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

// inspect runs the subtests of [idempotency.Inspector], if the store
// implements it.
func (st suite) inspect(t *testing.T) {
	t.Parallel()
	if _, ok := st.newStore(t).(idempotency.Inspector); !ok {
		t.Skip("the store does not implement idempotency.Inspector; the inspect tests do not apply")
	}
	t.Run("Nothing", st.inspectNothing)
	t.Run("Claim", st.inspectClaim)
	t.Run("Record", st.inspectRecord)
	t.Run("RecordWithoutExpiry", st.inspectRecordWithoutExpiry)
}

// startInspector is [suite.start] for a subtest of the inspector.
func (st suite) startInspector(t *testing.T) (idempotency.Store, idempotency.Inspector) {
	t.Helper()
	s := st.start(t)
	in, ok := s.(idempotency.Inspector)
	require.True(t, ok, "the store stopped implementing idempotency.Inspector")
	return s, in
}

// inspectNothing checks that a key that never held anything, and one whose
// lease or expiry ran out, holds nothing.
func (st suite) inspectNothing(t *testing.T) {
	s, in := st.startInspector(t)
	tests := []struct {
		name    string
		prepare func(t *testing.T, key string)
	}{
		{name: "absent", prepare: func(*testing.T, string) {}},
		{name: "lease ran out", prepare: func(t *testing.T, key string) {
			t.Helper()
			holdClaim(t, s, key, shortTTL)
			awaitTimePassed(t, s, shortTTL)
		}},
		{name: "record expired", prepare: func(t *testing.T, key string) {
			t.Helper()
			token := holdClaim(t, s, key, longTTL)
			require.NoError(t, s.Complete(t.Context(), key, token, []byte("done"), shortTTL))
			awaitTimePassed(t, s, shortTTL)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			tt.prepare(t, key)
			e := inspectKey(t, in, key)
			assert.Zero(t, e.State, "state of a key that holds nothing")
			assert.Zero(t, e.TTL, "time left of a key that holds nothing")
			assert.Empty(t, e.Record, "record of a key that holds nothing")
		})
	}
}

// inspectClaim checks that a live claim shows with a plausible lease left,
// and that inspecting it leaves it to its holder.
func (st suite) inspectClaim(t *testing.T) {
	s, in := st.startInspector(t)
	key := Key()
	token := holdClaim(t, s, key, longTTL)
	e := inspectKey(t, in, key)
	assert.Equal(t, idempotency.StateInFlight, e.State, "state of a live claim")
	assertTimeLeft(t, e.TTL, longTTL)
	assert.Empty(t, e.Record, "record of a live claim")

	assertInFlight(t, s, key)
	record := []byte("the holder's record")
	require.NoError(t, s.Complete(t.Context(), key, token, record, longTTL), "Complete after Inspect")
	assertCompleted(t, s, key, record)
}

// inspectRecord checks that a completed record shows with its bytes and a
// plausible time left, and that inspecting it does not consume it.
func (st suite) inspectRecord(t *testing.T) {
	s, in := st.startInspector(t)
	key := Key()
	record := []byte{'d', 0, 0xff, '{', '}'}
	token := holdClaim(t, s, key, longTTL)
	require.NoError(t, s.Complete(t.Context(), key, token, record, longTTL))
	e := inspectKey(t, in, key)
	assert.Equal(t, idempotency.StateCompleted, e.State, "state of a record")
	assertTimeLeft(t, e.TTL, longTTL)
	assert.Equal(t, record, e.Record, "record")
	assertCompleted(t, s, key, record)
}

// inspectRecordWithoutExpiry checks that a record that never expires shows
// no time left.
func (st suite) inspectRecordWithoutExpiry(t *testing.T) {
	s, in := st.startInspector(t)
	key := Key()
	record := []byte("kept forever")
	token := holdClaim(t, s, key, longTTL)
	require.NoError(t, s.Complete(t.Context(), key, token, record, 0))
	e := inspectKey(t, in, key)
	assert.Equal(t, idempotency.StateCompleted, e.State, "state of a record")
	assert.Zero(t, e.TTL, "time left of a record that never expires")
	assert.Equal(t, record, e.Record, "record")
}

// forget runs the subtests of [idempotency.Forgetter], if the store
// implements it.
func (st suite) forget(t *testing.T) {
	t.Parallel()
	s := st.newStore(t)
	if _, ok := s.(idempotency.Forgetter); !ok {
		t.Skip("the store does not implement idempotency.Forgetter; the forget tests do not apply")
	}
	t.Run("Nothing", st.forgetNothing)
	t.Run("Claim", st.forgetClaim)
	t.Run("Record", st.forgetRecord)
	t.Run("OtherKeys", st.forgetOtherKeys)
	if _, ok := s.(idempotency.Waiter); ok {
		t.Run("WakesWaiter", st.forgetWakesWaiter)
	}
}

// startForgetter is [suite.start] for a subtest of the forgetter.
func (st suite) startForgetter(t *testing.T) (idempotency.Store, idempotency.Forgetter) {
	t.Helper()
	s := st.start(t)
	f, ok := s.(idempotency.Forgetter)
	require.True(t, ok, "the store stopped implementing idempotency.Forgetter")
	return s, f
}

// forgetNothing checks that forgetting a key without a live claim or an
// unexpired record reports false, and leaves the key claimable.
func (st suite) forgetNothing(t *testing.T) {
	s, f := st.startForgetter(t)
	tests := []struct {
		name    string
		prepare func(t *testing.T, key string)
	}{
		{name: "absent", prepare: func(*testing.T, string) {}},
		{name: "forgotten", prepare: func(t *testing.T, key string) {
			t.Helper()
			holdClaim(t, s, key, longTTL)
			assert.True(t, forgetKey(t, f, key), "first Forget")
		}},
		{name: "lease ran out", prepare: func(t *testing.T, key string) {
			t.Helper()
			holdClaim(t, s, key, shortTTL)
			awaitTimePassed(t, s, shortTTL)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			tt.prepare(t, key)
			assert.False(t, forgetKey(t, f, key), "Forget of a key that holds nothing")
			assertClaimable(t, s, key)
		})
	}
}

// forgetClaim checks that forgetting a live claim frees the key at once, and
// that its former holder can then neither complete, renew nor release it,
// before or after the next claim.
func (st suite) forgetClaim(t *testing.T) {
	s, f := st.startForgetter(t)
	key := Key()
	old := holdClaim(t, s, key, longTTL)
	require.True(t, forgetKey(t, f, key), "Forget of a live claim")
	assert.ErrorIs(t, s.Renew(t.Context(), key, old, longTTL), idempotency.ErrNotHeld, "Renew after Forget")
	assert.ErrorIs(t, s.Complete(t.Context(), key, old, []byte("late"), longTTL), idempotency.ErrNotHeld, "Complete after Forget")

	next := holdClaim(t, s, key, longTTL)
	for _, op := range holderOps {
		assert.ErrorIs(t, op.op(t.Context(), s, key, old), idempotency.ErrNotHeld, "%s by the forgotten holder", op.name)
	}
	assertInFlight(t, s, key)
	record := []byte("the next holder's record")
	require.NoError(t, s.Complete(t.Context(), key, next, record, longTTL))
	assertCompleted(t, s, key, record)
}

// forgetRecord checks that forgetting a completed record lets the next
// request run.
func (st suite) forgetRecord(t *testing.T) {
	s, f := st.startForgetter(t)
	tests := []struct {
		name   string
		expiry time.Duration
	}{
		{name: "expiring", expiry: longTTL},
		{name: "never expiring", expiry: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			token := holdClaim(t, s, key, longTTL)
			require.NoError(t, s.Complete(t.Context(), key, token, []byte("first"), tt.expiry))
			require.True(t, forgetKey(t, f, key), "Forget of a record")
			next := holdClaim(t, s, key, longTTL)
			record := []byte("second")
			require.NoError(t, s.Complete(t.Context(), key, next, record, longTTL))
			assertCompleted(t, s, key, record)
		})
	}
}

// forgetOtherKeys checks that Forget leaves other keys alone, even one
// that begins with the forgotten key.
func (st suite) forgetOtherKeys(t *testing.T) {
	s, f := st.startForgetter(t)
	key := Key()
	longer := key + "x"
	holdClaim(t, s, key, longTTL)
	token := holdClaim(t, s, longer, longTTL)
	record := []byte("longer's record")
	require.NoError(t, s.Complete(t.Context(), longer, token, record, longTTL))
	require.True(t, forgetKey(t, f, key))
	assertCompleted(t, s, longer, record)
	assertClaimable(t, s, key)
}

// forgetWakesWaiter checks that forgetting a claim ends a wait on it well
// before its lease would.
func (st suite) forgetWakesWaiter(t *testing.T) {
	s, f := st.startForgetter(t)
	w, ok := s.(idempotency.Waiter)
	require.True(t, ok, "the store stopped implementing idempotency.Waiter")
	key := Key()
	holdClaim(t, s, key, longTTL)
	ended := make(chan struct{})
	done := startWait(t.Context(), w, key, ended)
	time.Sleep(waitSettle)
	close(ended)
	require.True(t, forgetKey(t, f, key))
	assertReturns(t, done, patience, nil)
}

// count runs the subtest of [idempotency.Counter], if the store implements
// it. The stores of the suite may share a backend with subtests that run at
// the same time, so it checks that the counts grow by at least what it adds.
func (st suite) count(t *testing.T) {
	s := st.start(t)
	c, ok := s.(idempotency.Counter)
	if !ok {
		t.Skip("the store does not implement idempotency.Counter; the count test does not apply")
	}
	const claims, records = 3, 2 // unequal, so that swapping them shows
	before := countAll(t, c)
	for range claims {
		holdClaim(t, s, Key(), longTTL)
	}
	for range records {
		key := Key()
		token := holdClaim(t, s, key, longTTL)
		require.NoError(t, s.Complete(t.Context(), key, token, []byte("done"), longTTL))
	}
	after := countAll(t, c)
	assert.GreaterOrEqual(t, after.Claims-before.Claims, int64(claims), "claims added (before %+v, after %+v)", before, after)
	assert.GreaterOrEqual(t, after.Records-before.Records, int64(records), "records added (before %+v, after %+v)", before, after)
}

func inspectKey(t *testing.T, in idempotency.Inspector, key string) idempotency.Entry {
	t.Helper()
	e, err := in.Inspect(t.Context(), key)
	require.NoError(t, err, "Inspect")
	return e
}

func forgetKey(t *testing.T, f idempotency.Forgetter, key string) bool {
	t.Helper()
	ok, err := f.Forget(t.Context(), key)
	require.NoError(t, err, "Forget")
	return ok
}

func countAll(t *testing.T, c idempotency.Counter) idempotency.Counts {
	t.Helper()
	n, err := c.Count(t.Context())
	require.NoError(t, err, "Count")
	return n
}

// assertTimeLeft checks that the time left of a claim or record made with
// ttl only just now is close to ttl.
func assertTimeLeft(t *testing.T, left, ttl time.Duration) {
	t.Helper()
	assert.Greater(t, left, ttl/2, "time left")
	assert.LessOrEqual(t, left, ttl, "time left")
}
