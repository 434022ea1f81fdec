package pgstore_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/store/pgstore"
)

// TestExactlyOnceAcrossInstances sends 64 concurrent duplicates of each of
// 10 requests to three instances, each with a pool of its own on one
// database: the handler's row is committed exactly once per key, and every
// client gets the same answer.
func TestExactlyOnceAcrossInstances(t *testing.T) {
	t.Parallel()
	const (
		instances  = 3
		duplicates = 64
		rounds     = 10
	)
	admin := newPool(t, nil)
	table := newTable(t, admin)
	l := newLedger(t, admin)
	urls := make([]string, instances)
	for i := range urls {
		store := pgstore.New(newPool(t, nil), table, pgstore.WithSweepInterval(0))
		t.Cleanup(func() { _ = store.Close() })
		urls[i] = serveHTTP(t, store, l.chargeHandler("instance", nil), idempotency.WithWait(20*time.Second)).URL
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: duplicates}}
	t.Cleanup(client.CloseIdleConnections)

	for round := range rounds {
		key, order := rand.Text(), rand.Text()
		answers := make([]answer, duplicates)
		errs := make([]error, duplicates)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range duplicates {
			wg.Go(func() {
				<-start
				answers[i], errs[i] = post(t.Context(), client, urls[i%instances], key, order)
			})
		}
		close(start)
		wg.Wait()

		first := 0
		for i, a := range answers {
			require.NoError(t, errs[i], "round %d, request %d", round, i)
			require.Equal(t, http.StatusCreated, a.status, "round %d, request %d: %s", round, i, a.body)
			assert.Equal(t, answers[0].body, a.body, "round %d, request %d", round, i)
			if !a.replayed {
				first++
			}
		}
		assert.Equal(t, 1, first, "round %d: answers that were not replays", round)
		assert.Len(t, l.writers(t, order), 1, "round %d: committed rows", round)
	}
}

// TestCrashAfterCommit cuts the connection after the handler's transaction
// committed and before the client got its answer: the retry replays the
// answer, and the row is there once.
func TestCrashAfterCommit(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	store := newStore(t, pool)
	l := newLedger(t, pool)
	guarded := httpmw.New(store, quiet)(l.chargeHandler("first", nil))
	mw := httptest.NewServer(guarded)
	t.Cleanup(mw.Close)
	// This instance dies as the response starts: after the middleware
	// stored the record and committed, before anything reached the client.
	crashing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		guarded.ServeHTTP(crashOnAnswer{w}, r)
	}))
	t.Cleanup(crashing.Close)

	key, order := rand.Text(), rand.Text()
	_, err := post(t.Context(), http.DefaultClient, crashing.URL, key, order)
	require.Error(t, err, "the client must not get an answer")
	require.Equal(t, []string{"first"}, l.writers(t, order), "committed before the crash")

	a, err := post(t.Context(), http.DefaultClient, mw.URL, key, order)
	require.NoError(t, err)
	assert.Equal(t, http.StatusCreated, a.status)
	assert.True(t, a.replayed, "the retry is a replay")
	assert.Equal(t, []string{"first"}, l.writers(t, order), "the handler did not run again")
}

// crashOnAnswer is a response writer whose process dies when the response
// starts.
type crashOnAnswer struct{ http.ResponseWriter }

func (crashOnAnswer) WriteHeader(int)           { panic(http.ErrAbortHandler) }
func (crashOnAnswer) Write([]byte) (int, error) { panic(http.ErrAbortHandler) }

// TestCrashBeforeCommit kills a holder after its handler wrote in its
// transaction and before the commit (its backend is terminated and its
// claim never renewed, as when its process dies): nothing it wrote is
// committed, and once its lease runs out a retry runs the handler on
// clean data. The dead holder's completion, had it come back, fails.
func TestCrashBeforeCommit(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	store := newStore(t, pool)
	l := newLedger(t, pool)
	srv := serveHTTP(t, store, l.chargeHandler("retry", nil))

	key, order := rand.Text(), rand.Text()
	storageKey := idempotency.StorageKey("", "POST /charges", key)
	const lease = time.Second
	res, err := store.Claim(t.Context(), storageKey, "dying-holder-token-0123", lease)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateClaimed, res.State)
	ctx, completer := store.BindTx(t.Context(), storageKey, "dying-holder-token-0123")
	_, err = l.charge(ctx, order, "dying")
	require.NoError(t, err)
	tx, err := pgstore.Tx(ctx)
	require.NoError(t, err)
	var terminated bool
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT pg_terminate_backend($1)",
		tx.Conn().PgConn().PID()).Scan(&terminated))
	require.True(t, terminated)
	assert.Empty(t, l.writers(t, order), "nothing committed")

	a, err := post(t.Context(), http.DefaultClient, srv.URL, key, order)
	require.NoError(t, err)
	assert.Equal(t, http.StatusConflict, a.status, "in flight while the dead holder's lease lasts")

	a = postUntil(t, http.DefaultClient, srv.URL, key, order, lease+10*time.Second)
	assert.Equal(t, http.StatusCreated, a.status, a.body)
	assert.False(t, a.replayed)
	assert.Equal(t, []string{"retry"}, l.writers(t, order))

	began, err := completer.CompleteTx(t.Context(), []byte("late"), time.Hour)
	assert.True(t, began)
	assert.Error(t, err, "the dead holder cannot commit")
	again, err := post(t.Context(), http.DefaultClient, srv.URL, key, order)
	require.NoError(t, err)
	assert.True(t, again.replayed)
	assert.Equal(t, a.body, again.body, "the retry's answer stands")
}

// frozenRenewals is a store whose holder cannot renew its claims, as when
// its renewals are lost: its lease runs out while its handler runs.
type frozenRenewals struct{ *pgstore.Store }

func (frozenRenewals) Renew(context.Context, string, string, time.Duration) error { return nil }

// TestLeaseLostWhileHandlerRuns lets a holder's lease run out while its
// handler runs and another instance take the key over: the late holder's
// writes are rolled back and its client is told to retry, the new holder's
// commit stands, and the late client's retry replays it.
func TestLeaseLostWhileHandlerRuns(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	table := newTable(t, pool)
	l := newLedger(t, pool)
	storeA := pgstore.New(pool, table, pgstore.WithSweepInterval(0))
	storeB := pgstore.New(newPool(t, nil), table, pgstore.WithSweepInterval(0))
	t.Cleanup(func() { _ = storeA.Close(); _ = storeB.Close() })

	wrote, proceed := make(chan struct{}), make(chan struct{})
	late := serveHTTP(t, frozenRenewals{storeA}, l.chargeHandler("late", func(*http.Request) {
		close(wrote)
		<-proceed
	}), idempotency.WithLease(500*time.Millisecond))
	next := serveHTTP(t, storeB, l.chargeHandler("next", nil))

	key, order := rand.Text(), rand.Text()
	lateAnswer := make(chan answer, 1)
	go func() {
		a, err := post(context.Background(), http.DefaultClient, late.URL, key, order)
		assert.NoError(t, err)
		lateAnswer <- a
	}()
	<-wrote
	a := postUntil(t, http.DefaultClient, next.URL, key, order, 10*time.Second)
	require.Equal(t, http.StatusCreated, a.status, a.body)
	close(proceed)

	lost := <-lateAnswer
	assert.Equal(t, http.StatusServiceUnavailable, lost.status, lost.body)
	assert.Equal(t, idempotency.StatusStoreUnavailable, lost.label)
	assert.Equal(t, []string{"next"}, l.writers(t, order), "only the new holder's row is committed")
	retry, err := post(t.Context(), http.DefaultClient, late.URL, key, order)
	require.NoError(t, err)
	assert.True(t, retry.replayed)
	assert.Equal(t, a.body, retry.body)
}

// TestStatementsPerDecision counts the statements each decision sends.
func TestStatementsPerDecision(t *testing.T) {
	t.Parallel()
	trace := &statements{}
	pool := newPool(t, trace)
	store := newStore(t, pool)
	l := newLedger(t, pool)
	plain := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	withTx := serveHTTP(t, store, l.chargeHandler("tx", nil))
	withoutTx := serveHTTP(t, store, plain)
	// Every statement is prepared on its connection's first use; the
	// counts are for a warm pool.
	for range 3 {
		postUntil(t, http.DefaultClient, withTx.URL, rand.Text(), rand.Text(), time.Second)
		postUntil(t, http.DefaultClient, withoutTx.URL, rand.Text(), rand.Text(), time.Second)
	}

	tests := []struct {
		name string
		url  string
		want []string
	}{
		{name: "first execution in the handler's transaction", url: withTx.URL,
			// claim; the handler's begin and insert; the record and commit
			want: []string{"claim", "begin", "insert", "complete", "commit"}},
		{name: "first execution without a transaction", url: withoutTx.URL,
			want: []string{"claim", "complete"}},
	}
	for _, tt := range tests {
		key, order := rand.Text(), rand.Text()
		trace.take()
		a := postUntil(t, http.DefaultClient, tt.url, key, order, time.Second)
		require.Less(t, a.status, 300, a.body)
		assert.Equal(t, tt.want, trace.take(), tt.name)

		a = postUntil(t, http.DefaultClient, tt.url, key, order, time.Second)
		require.True(t, a.replayed)
		assert.Equal(t, []string{"claim"}, trace.take(), tt.name+": replay")
	}
}

// TestLeaseCheckedAtCompletion: the lease is checked by the database's
// clock when the record is written, not when the handler's transaction
// began: a lease that ran out during the transaction cannot commit, even
// when nobody took the key over.
func TestLeaseCheckedAtCompletion(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	store := newStore(t, pool)
	l := newLedger(t, pool)
	key, order := rand.Text(), rand.Text()
	res, err := store.Claim(t.Context(), key, "holder-token", 300*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateClaimed, res.State)
	ctx, completer := store.BindTx(t.Context(), key, "holder-token")
	_, err = l.charge(ctx, order, "holder") // the transaction begins here
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		e, err := store.Inspect(t.Context(), key)
		return err == nil && e.State == 0
	}, 10*time.Second, 10*time.Millisecond, "the lease runs out")

	began, err := completer.CompleteTx(t.Context(), []byte("late"), time.Hour)
	assert.True(t, began)
	require.ErrorIs(t, err, idempotency.ErrNotHeld)
	assert.Empty(t, l.writers(t, order), "rolled back")
	res, err = store.Claim(t.Context(), key, "next", time.Minute)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateClaimed, res.State, "nothing stored")
}
