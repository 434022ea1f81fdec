package pgstore_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/pgtest"
	"github.com/idemkey/idempotency/store/pgstore"
)

// BenchmarkFirstExecution compares a handler's own transaction (BEGIN,
// INSERT, COMMIT) with the same work under the engine over pgstore, which
// adds the claim and the record's write inside the transaction; and a
// replay, the claim alone. PostgreSQL is reached over loopback, and every
// commit waits for the disk.
func BenchmarkFirstExecution(b *testing.B) {
	cfg := pgtest.Config(b)
	// Commits wait for the disk, as in production (pgtest turns that off).
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	pool := pgtest.NewPool(b, cfg)
	store := newStore(b, pool)
	l := newLedger(b, pool)
	engine := idempotency.NewEngine(store, quiet)
	ctx := context.Background()
	insert := "INSERT INTO " + l.table + " (order_id, writer) VALUES ($1, 'bench')"
	body := []byte(`{"id":42,"status":"succeeded"}`)
	var n int
	next := func() string { n++; return "bench-" + strconv.Itoa(n) }

	b.Run("baseline=handler's own transaction", func(b *testing.B) {
		for b.Loop() {
			tx, err := pool.Begin(ctx)
			require.NoError(b, err)
			_, err = tx.Exec(ctx, insert, next())
			require.NoError(b, err)
			require.NoError(b, tx.Commit(ctx))
		}
	})
	b.Run("first execution in pgstore.Tx", func(b *testing.B) {
		for b.Loop() {
			key := next()
			exec, _, err := engine.Begin(ctx, idempotency.Request{Route: "bench", Key: key})
			require.NoError(b, err)
			hctx := exec.Context(ctx)
			tx, err := pgstore.Tx(hctx)
			require.NoError(b, err)
			_, err = tx.Exec(hctx, insert, key)
			require.NoError(b, err)
			require.NoError(b, exec.Complete(&idempotency.Record{Status: 201, Body: body}))
		}
	})
	b.Run("first execution, write outside the library", func(b *testing.B) {
		for b.Loop() {
			key := next()
			exec, _, err := engine.Begin(ctx, idempotency.Request{Route: "bench", Key: key})
			require.NoError(b, err)
			_, err = pool.Exec(ctx, insert, key)
			require.NoError(b, err)
			require.NoError(b, exec.Complete(&idempotency.Record{Status: 201, Body: body}))
		}
	})
	b.Run("replay", func(b *testing.B) {
		key := next()
		exec, _, err := engine.Begin(ctx, idempotency.Request{Route: "bench", Key: key})
		require.NoError(b, err)
		require.NoError(b, exec.Complete(&idempotency.Record{Status: 201, Body: body}))
		for b.Loop() {
			_, rec, err := engine.Begin(ctx, idempotency.Request{Route: "bench", Key: key})
			require.NoError(b, err)
			require.NotNil(b, rec)
		}
	})
}
