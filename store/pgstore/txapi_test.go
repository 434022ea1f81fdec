package pgstore_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/pgtest"
	"github.com/idemkey/idempotency/store/pgstore"
)

// TestTxWithoutClaim: a context that carries no claim gives no
// transaction: no key, the engine failing open, no library at all.
func TestTxWithoutClaim(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	l := newLedger(t, pool)
	_, err := pgstore.Tx(t.Context())
	assert.ErrorIs(t, err, pgstore.ErrNoTx, "no library")

	// A table that does not exist makes every claim fail.
	broken := pgstore.New(pool, pgstore.WithTable(pgtest.Name("missing")), pgstore.WithSweepInterval(0))
	t.Cleanup(func() { _ = broken.Close() })
	tests := []struct {
		name  string
		store idempotency.Store
		key   string
		opts  []idempotency.Option
	}{
		{name: "no key", store: newStore(t, pool)},
		{name: "fail open", store: broken, key: rand.Text(), opts: []idempotency.Option{idempotency.WithFailOpen(true)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := serveHTTP(t, tt.store, l.chargeHandler("x", nil), tt.opts...)
			a, err := post(t.Context(), http.DefaultClient, srv.URL, tt.key, rand.Text())
			require.NoError(t, err)
			assert.Equal(t, http.StatusInternalServerError, a.status)
			assert.Contains(t, a.body, pgstore.ErrNoTx.Error())
		})
	}
}

// TestTxOwnedByLibrary: the handler can neither commit nor roll back the
// transaction; savepoints work; after the handler returned, Tx refuses.
func TestTxOwnedByLibrary(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	store := newStore(t, pool)
	l := newLedger(t, pool)
	order := rand.Text()
	var kept context.Context
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		kept = ctx
		tx, err := pgstore.Tx(ctx)
		if !assert.NoError(t, err) {
			return
		}
		again, err := pgstore.Tx(ctx)
		if !assert.NoError(t, err) {
			return
		}
		assert.Equal(t, tx.Conn(), again.Conn(), "one transaction per request")
		assert.ErrorIs(t, tx.Commit(ctx), pgstore.ErrTxOwned)
		assert.ErrorIs(t, tx.Rollback(ctx), pgstore.ErrTxOwned)

		_, err = l.charge(ctx, order, "main")
		assert.NoError(t, err)
		for _, keep := range []bool{false, true} {
			sp, err := tx.Begin(ctx)
			if !assert.NoError(t, err) {
				return
			}
			writer := "rolled back"
			if keep {
				writer = "savepoint"
			}
			_, err = sp.Exec(ctx, "INSERT INTO "+l.table+" (order_id, writer) VALUES ($1, $2)", order, writer)
			assert.NoError(t, err)
			if keep {
				assert.NoError(t, sp.Commit(ctx))
			} else {
				assert.NoError(t, sp.Rollback(ctx))
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})
	srv := serveHTTP(t, store, h)
	a, err := post(t.Context(), http.DefaultClient, srv.URL, rand.Text(), order)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, a.status, a.body)
	assert.Equal(t, []string{"main", "savepoint"}, l.writers(t, order))
	_, err = pgstore.Tx(kept)
	assert.ErrorIs(t, err, pgstore.ErrTxDone)
}

// TestTxNotStored: what the store does not keep rolls back, and a
// transaction that cannot commit answers 503.
func TestTxNotStored(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	store := newStore(t, pool)
	l := newLedger(t, pool)
	tests := []struct {
		name       string
		after      func(w http.ResponseWriter, tx pgx.Tx)
		wantStatus int
		wantLabel  string
	}{
		{name: "HTML answer", wantStatus: http.StatusOK, after: func(w http.ResponseWriter, _ pgx.Tx) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte("<p>done</p>"))
		}},
		{name: "panic", wantStatus: 0, after: func(http.ResponseWriter, pgx.Tx) { panic(http.ErrAbortHandler) }},
		{name: "failed statement outside a savepoint", wantStatus: http.StatusServiceUnavailable,
			wantLabel: idempotency.StatusStoreUnavailable, after: func(w http.ResponseWriter, tx pgx.Tx) {
				_, err := tx.Exec(context.Background(), "SELECT 1/0")
				assert.Error(t, err)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusConflict)
				_, _ = w.Write([]byte(`{"error":"duplicate"}`))
			}},
		{name: "ended by the handler's SQL", wantStatus: http.StatusServiceUnavailable,
			wantLabel: idempotency.StatusStoreUnavailable, after: func(w http.ResponseWriter, tx pgx.Tx) {
				_, err := tx.Exec(context.Background(), "ROLLBACK")
				assert.NoError(t, err)
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Location", "/charges/1")
				_, _ = w.Write([]byte(`{}`))
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key, order := rand.Text(), rand.Text()
			var runs int
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				runs++
				_, err := l.charge(r.Context(), order, "x")
				assert.NoError(t, err)
				if runs == 1 {
					tx, _ := pgstore.Tx(r.Context())
					tt.after(w, tx)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{}`))
			})
			srv := serveHTTP(t, store, h)
			a, err := post(t.Context(), http.DefaultClient, srv.URL, key, order)
			if tt.wantStatus == 0 {
				require.Error(t, err, "the connection is cut")
			} else {
				require.NoError(t, err)
				assert.Equal(t, tt.wantStatus, a.status, a.body)
				assert.Equal(t, tt.wantLabel, a.label)
			}
			assert.Empty(t, l.writers(t, order), "rolled back")
			a, err = post(t.Context(), http.DefaultClient, srv.URL, key, order)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, a.status, "the retry runs")
			assert.False(t, a.replayed)
			assert.Equal(t, []string{"x"}, l.writers(t, order))
		})
	}
}

// TestContextWithTx runs a handler's code on a test's own transaction.
func TestContextWithTx(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	l := newLedger(t, pool)
	tx, err := pool.Begin(t.Context())
	require.NoError(t, err)
	ctx := pgstore.ContextWithTx(t.Context(), tx)
	order := rand.Text()
	_, err = l.charge(ctx, order, "test")
	require.NoError(t, err)
	handed, err := pgstore.Tx(ctx)
	require.NoError(t, err)
	assert.ErrorIs(t, handed.Commit(ctx), pgstore.ErrTxOwned)
	var n int
	require.NoError(t, tx.QueryRow(ctx, "SELECT count(*) FROM "+l.table+" WHERE order_id = $1", order).Scan(&n))
	assert.Equal(t, 1, n, "the write is in the test's transaction")
	require.NoError(t, tx.Rollback(ctx))
	assert.Empty(t, l.writers(t, order))
}
