package pgstore_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency/internal/pgtest"
	"github.com/idemkey/idempotency/store/pgstore"
)

// newTable creates a table of the test's own on pool and returns the option
// that names it.
func newTable(t testing.TB, pool *pgxpool.Pool) pgstore.Option {
	t.Helper()
	opt := pgstore.WithTable(pgtest.Name("idem"))
	require.NoError(t, pgstore.Migrate(t.Context(), pool, opt))
	return opt
}

// newStore returns a store on a table of the test's own, closed when the
// test ends.
func newStore(t testing.TB, pool *pgxpool.Pool, opts ...pgstore.Option) *pgstore.Store {
	t.Helper()
	opts = append([]pgstore.Option{newTable(t, pool), pgstore.WithSweepInterval(0)}, opts...)
	s := pgstore.New(pool, opts...)
	t.Cleanup(func() { _ = s.Close() })
	return s
}
