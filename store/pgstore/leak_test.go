package pgstore_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemkey/idempotency/internal/pgtest"
	"github.com/idemkey/idempotency/store/pgstore"
	"github.com/idemkey/idempotency/storetest"
)

// TestCloseStopsEverything: after Close, nothing the store started is left
// running: neither the sweep nor the listening connection. It does not run
// in parallel, so that other tests' goroutines do not count.
func TestCloseStopsEverything(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	pool := pgtest.NewPool(t, pgtest.Config(t))
	table := newTable(t, pool)
	s := pgstore.New(pool, table, pgstore.WithSweepInterval(time.Millisecond))
	key := storetest.Key()
	res, err := s.Claim(t.Context(), key, "t", time.Minute)
	require.NoError(t, err)
	require.NotZero(t, res.State)
	waited := make(chan error, 1)
	go func() { waited <- s.Wait(t.Context(), key) }()
	time.Sleep(50 * time.Millisecond) // let it listen and sweep
	require.NoError(t, s.Close())
	require.ErrorIs(t, <-waited, pgstore.ErrClosed, "Close ends a wait")
	require.NoError(t, s.Release(t.Context(), key, "t"), "the pool is still the caller's")
	pool.Close()
	goleak.VerifyNone(t, ignore)
}
