package memory_test

import (
	"crypto/rand"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
	"github.com/idemkey/idempotency/storetest"
)

func TestCountExact(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	const claims, records = 150, 90 // over every shard
	for range claims {
		_, err := s.Claim(ctx, storetest.Key(), rand.Text(), time.Hour)
		require.NoError(t, err)
	}
	for range records {
		key, token := storetest.Key(), rand.Text()
		_, err := s.Claim(ctx, key, token, time.Hour)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, key, token, []byte("r"), time.Hour))
	}
	// Neither a forgotten key nor one whose lease ran out counts.
	forgotten := storetest.Key()
	_, err := s.Claim(ctx, forgotten, rand.Text(), time.Hour)
	require.NoError(t, err)
	ok, err := s.Forget(ctx, forgotten)
	require.NoError(t, err)
	require.True(t, ok)
	_, err = s.Claim(ctx, storetest.Key(), rand.Text(), time.Millisecond)
	require.NoError(t, err)

	want := idempotency.Counts{Claims: claims, Records: records}
	require.Eventually(t, func() bool {
		got, err := s.Count(ctx)
		return err == nil && got == want
	}, 5*time.Second, time.Millisecond, "counts never became %+v", want)
}

// TestForgetMakesRoom checks that a forgotten claim no longer takes a place
// in a full store.
func TestForgetMakesRoom(t *testing.T) {
	t.Parallel()
	s := newStore(t, memory.WithMaxRecords(1))
	ctx := t.Context()
	a, b := storetest.Key(), storetest.Key()
	_, err := s.Claim(ctx, a, rand.Text(), time.Hour)
	require.NoError(t, err)
	_, err = s.Claim(ctx, b, rand.Text(), time.Hour)
	require.ErrorIs(t, err, memory.ErrFull)
	ok, err := s.Forget(ctx, a)
	require.NoError(t, err)
	require.True(t, ok)
	res, err := s.Claim(ctx, b, rand.Text(), time.Hour)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateClaimed, res.State)
}

// TestInspectRecordIsACopy checks that a tool that changes the record
// Inspect returned changes nothing that a replay sends.
func TestInspectRecordIsACopy(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	key, token := storetest.Key(), rand.Text()
	_, err := s.Claim(ctx, key, token, time.Hour)
	require.NoError(t, err)
	require.NoError(t, s.Complete(ctx, key, token, []byte("original"), time.Hour))
	e, err := s.Inspect(ctx, key)
	require.NoError(t, err)
	copy(e.Record, "XXXXXXXX")
	res, err := s.Claim(ctx, key, rand.Text(), time.Hour)
	require.NoError(t, err)
	assert.Equal(t, []byte("original"), res.Record)
}

// TestInspectLongDurations checks the time left of the longest lease and
// expiry a store accepts: a record that expires after math.MaxInt64 is one
// that never expires, and a claim with that lease has a positive lease
// left.
func TestInspectLongDurations(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	key, token := storetest.Key(), rand.Text()
	_, err := s.Claim(ctx, key, token, math.MaxInt64)
	require.NoError(t, err)
	e, err := s.Inspect(ctx, key)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateInFlight, e.State)
	assert.Greater(t, e.TTL, 100*365*24*time.Hour)

	require.NoError(t, s.Complete(ctx, key, token, []byte("r"), math.MaxInt64))
	e, err = s.Inspect(ctx, key)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateCompleted, e.State)
	assert.Zero(t, e.TTL, "a record that never expires")
}
