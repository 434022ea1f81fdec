package pgstore_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/pgtest"
	"github.com/idemkey/idempotency/store/pgstore"
	"github.com/idemkey/idempotency/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	storetest.Run(t, func(t *testing.T) idempotency.Store {
		return newStore(t, pool)
	})
}

func TestInspectForgetCount(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	s := newStore(t, pool)
	ctx := t.Context()
	claimed, completed, forever, expired := storetest.Key(), storetest.Key(), storetest.Key(), storetest.Key()
	mustClaim(t, s, claimed, "t1", time.Hour)
	mustClaim(t, s, completed, "t2", time.Hour)
	require.NoError(t, s.Complete(ctx, completed, "t2", []byte("rec"), time.Hour))
	mustClaim(t, s, forever, "t3", time.Hour)
	require.NoError(t, s.Complete(ctx, forever, "t3", []byte("kept"), 0))
	mustClaim(t, s, expired, "t4", time.Millisecond)
	time.Sleep(5 * time.Millisecond) // the database's clock runs on meanwhile

	tests := []struct {
		name                   string
		key                    string
		wantState              idempotency.State
		wantRecord             []byte
		wantTTLMin, wantTTLMax time.Duration
	}{
		{name: "claim", key: claimed, wantState: idempotency.StateInFlight, wantTTLMin: 50 * time.Minute, wantTTLMax: time.Hour},
		{name: "record", key: completed, wantState: idempotency.StateCompleted, wantRecord: []byte("rec"),
			wantTTLMin: 50 * time.Minute, wantTTLMax: time.Hour},
		{name: "record without expiry", key: forever, wantState: idempotency.StateCompleted, wantRecord: []byte("kept")},
		{name: "expired", key: expired},
		{name: "absent", key: storetest.Key()},
	}
	for _, tt := range tests {
		e, err := s.Inspect(ctx, tt.key)
		require.NoError(t, err, tt.name)
		assert.Equal(t, tt.wantState, e.State, tt.name)
		assert.Equal(t, tt.wantRecord, e.Record, tt.name)
		assert.GreaterOrEqual(t, e.TTL, tt.wantTTLMin, tt.name)
		assert.LessOrEqual(t, e.TTL, tt.wantTTLMax, tt.name)
	}

	counts, err := s.Count(ctx)
	require.NoError(t, err)
	assert.Equal(t, idempotency.Counts{Claims: 1, Records: 2}, counts)

	for _, tt := range []struct {
		key      string
		wantLive bool
	}{{claimed, true}, {completed, true}, {expired, false}, {storetest.Key(), false}} {
		live, err := s.Forget(ctx, tt.key)
		require.NoError(t, err)
		assert.Equal(t, tt.wantLive, live)
		res, err := s.Claim(ctx, tt.key, "after", time.Hour)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StateClaimed, res.State, "forgotten keys run anew")
	}
	assert.ErrorIs(t, s.Complete(ctx, claimed, "t1", []byte("late"), time.Hour), idempotency.ErrNotHeld,
		"a forgotten claim's holder cannot complete it")
}

func mustClaim(t *testing.T, s idempotency.Store, key, token string, lease time.Duration) {
	t.Helper()
	res, err := s.Claim(t.Context(), key, token, lease)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateClaimed, res.State)
}

// TestDurationsSaturate: the longest durations are "very long", never an
// error and never "now".
func TestDurationsSaturate(t *testing.T) {
	t.Parallel()
	s := newStore(t, newPool(t, nil))
	ctx := t.Context()
	key := storetest.Key()
	mustClaim(t, s, key, "t", math.MaxInt64)
	require.NoError(t, s.Renew(ctx, key, "t", math.MaxInt64))
	e, err := s.Inspect(ctx, key)
	require.NoError(t, err)
	assert.Greater(t, e.TTL, 50*365*24*time.Hour)
	require.NoError(t, s.Complete(ctx, key, "t", []byte("r"), math.MaxInt64))
	e, err = s.Inspect(ctx, key)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateCompleted, e.State)
	assert.Greater(t, e.TTL, 50*365*24*time.Hour)
}

func TestSweep(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	s := newStore(t, pool, pgstore.WithSweepBatch(3))
	ctx := t.Context()
	for i := range 10 {
		key := storetest.Key()
		mustClaim(t, s, key, "t", time.Hour)
		if i%2 == 0 {
			require.NoError(t, s.Renew(ctx, key, "t", time.Millisecond))
		}
	}
	live := storetest.Key()
	mustClaim(t, s, live, "t", time.Hour)
	time.Sleep(5 * time.Millisecond)
	n, err := s.Sweep(ctx)
	require.NoError(t, err)
	assert.Equal(t, 5, n, "every expired row, over several batches")
	n, err = s.Sweep(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
	counts, err := s.Count(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(6), counts.Claims)
}

// TestBackgroundSweep: the store sweeps by itself, and Close stops it.
func TestBackgroundSweep(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	name := pgtest.Name("swept")
	table := pgstore.WithTable(name)
	require.NoError(t, pgstore.Migrate(t.Context(), pool, table))
	probe := pgstore.New(pool, table, pgstore.WithSweepInterval(0))
	key := storetest.Key()
	mustClaim(t, probe, key, "t", time.Millisecond)
	s := pgstore.New(pool, table, pgstore.WithSweepInterval(20*time.Millisecond))
	var rows int
	require.Eventually(t, func() bool {
		require.NoError(t, pool.QueryRow(t.Context(), "SELECT count(*) FROM "+name).Scan(&rows))
		return rows == 0
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "a second Close does nothing")
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	opt := pgstore.WithTable(pgtest.Name("migrated"))
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() { errs <- pgstore.Migrate(t.Context(), pool, opt) }()
	}
	for range cap(errs) {
		assert.NoError(t, <-errs)
	}
	s := pgstore.New(pool, opt, pgstore.WithSweepInterval(0))
	defer s.Close()
	mustClaim(t, s, storetest.Key(), "t", time.Hour)
}

func TestSchema(t *testing.T) {
	t.Parallel()
	assert.Contains(t, pgstore.Schema(), "CREATE TABLE IF NOT EXISTS idempotency (")
	assert.Contains(t, pgstore.Schema(pgstore.WithTable("app.idem")), "CREATE INDEX IF NOT EXISTS idem_expires_at ON app.idem")
}

func TestOptionsPanic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opt  func()
		want string
	}{
		{name: "table with a quote", opt: func() { pgstore.WithTable(`x"; DROP TABLE y; --`) }, want: "WithTable"},
		{name: "upper-case table", opt: func() { pgstore.WithTable("Idem") }, want: "WithTable"},
		{name: "empty table", opt: func() { pgstore.WithTable("") }, want: "WithTable"},
		{name: "long table", opt: func() { pgstore.WithTable(strings.Repeat("a", 64)) }, want: "WithTable"},
		{name: "negative sweep", opt: func() { pgstore.WithSweepInterval(-1) }, want: "WithSweepInterval"},
		{name: "zero batch", opt: func() { pgstore.WithSweepBatch(0) }, want: "WithSweepBatch"},
		{name: "zero poll", opt: func() { pgstore.WithPollInterval(0) }, want: "WithPollInterval"},
		{name: "nil logger", opt: func() { pgstore.WithLogger(nil) }, want: "WithLogger"},
		{name: "nil pool", opt: func() { pgstore.New(nil) }, want: "New"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				r := recover()
				require.NotNil(t, r)
				assert.Contains(t, r, "pgstore: "+tt.want)
			}()
			tt.opt()
		})
	}
}

// TestWaitIsNotified: a waiting duplicate sends one statement, however long
// it waits, and is woken by the completion, long before its poll interval.
func TestWaitIsNotified(t *testing.T) {
	t.Parallel()
	trace := &statements{}
	pool := newPool(t, trace)
	s := newStore(t, pool, pgstore.WithPollInterval(time.Minute))
	ctx := t.Context()
	key := storetest.Key()
	mustClaim(t, s, key, "holder", time.Minute)
	require.NoError(t, s.Wait(ctx, storetest.Key()), "a key without a claim returns at once")
	trace.take()

	done := make(chan error, 1)
	go func() { done <- s.Wait(ctx, key) }()
	var sent []string
	require.Eventually(t, func() bool {
		sent = append(sent, trace.take()...)
		return len(sent) > 0
	}, 5*time.Second, 5*time.Millisecond)
	// However long it waits, nothing more is sent.
	select {
	case err := <-done:
		require.Failf(t, "Wait returned before the claim ended", "%v", err)
	case <-time.After(500 * time.Millisecond):
	}
	assert.Equal(t, []string{"update"}, append(sent, trace.take()...), "the mark, and nothing else")

	require.NoError(t, s.Complete(ctx, key, "holder", []byte("done"), time.Hour))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		require.Fail(t, "Wait was not woken by the completion")
	}
}
