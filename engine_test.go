package idempotency_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
)

// faultyStore wraps a store and injects failures and corrupt records.
type faultyStore struct {
	idempotency.Store
	claimErr    error
	completeErr error
	corrupt     []byte
	claims      atomic.Int64
	releases    atomic.Int64
}

func (s *faultyStore) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	s.claims.Add(1)
	if s.claimErr != nil {
		return idempotency.ClaimResult{}, s.claimErr
	}
	if s.corrupt != nil {
		return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: s.corrupt}, nil
	}
	return s.Store.Claim(ctx, key, token, lease)
}

func (s *faultyStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	if s.completeErr != nil {
		return s.completeErr
	}
	return s.Store.Complete(ctx, key, token, record, expiry)
}

func (s *faultyStore) Release(ctx context.Context, key, token string) error {
	s.releases.Add(1)
	return s.Store.Release(ctx, key, token)
}

func newMemory(t *testing.T) *memory.Store {
	t.Helper()
	s := memory.New()
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func req(key string, payload string) idempotency.Request {
	var f idempotency.Fingerprinter
	f.AddString(payload)
	return idempotency.Request{Route: "POST /charges", Key: key, Fingerprint: f.Sum()}
}

func jsonRecord(body string) *idempotency.Record {
	return &idempotency.Record{
		Status: 201,
		Header: http.Header{"Content-Type": {"application/json"}},
		Body:   []byte(body),
	}
}

func TestEngineFirstThenReplay(t *testing.T) {
	t.Parallel()
	e := idempotency.NewEngine(newMemory(t))
	ctx := t.Context()

	x, rec, err := e.Begin(ctx, req("k1", "a"))
	require.NoError(t, err)
	require.NotNil(t, x)
	require.Nil(t, rec)
	require.NoError(t, x.Complete(jsonRecord(`{"id":1}`)))

	x, rec, err = e.Begin(ctx, req("k1", "a"))
	require.NoError(t, err)
	assert.Nil(t, x)
	require.NotNil(t, rec)
	assert.Equal(t, 201, rec.Status)
	assert.Equal(t, `{"id":1}`, string(rec.Body))
	assert.Equal(t, "application/json", rec.Header.Get("Content-Type"))
}

func TestEngineMismatch(t *testing.T) {
	t.Parallel()
	e := idempotency.NewEngine(newMemory(t))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	require.NoError(t, x.Complete(jsonRecord(`{}`)))

	_, _, err = e.Begin(t.Context(), req("k", "b"))
	assert.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)

	off := idempotency.NewEngine(newMemory(t), idempotency.WithoutFingerprint())
	x, _, err = off.Begin(t.Context(), idempotency.Request{Route: "r", Key: "k"})
	require.NoError(t, err)
	require.NoError(t, x.Complete(jsonRecord(`{}`)))
	_, rec, err := off.Begin(t.Context(), idempotency.Request{Route: "r", Key: "k"})
	require.NoError(t, err)
	assert.NotNil(t, rec)
}

func TestEngineInFlight(t *testing.T) {
	t.Parallel()
	e := idempotency.NewEngine(newMemory(t))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	// In flight whatever the payload.
	_, _, err = e.Begin(t.Context(), req("k", "other"))
	assert.ErrorIs(t, err, idempotency.ErrInFlight)
	require.NoError(t, x.Release())
	x, _, err = e.Begin(t.Context(), req("k", "other"))
	require.NoError(t, err, "a released key runs again")
	require.NoError(t, x.Release())
}

func TestEngineConcurrentDuplicatesClaimOnce(t *testing.T) {
	t.Parallel()
	e := idempotency.NewEngine(newMemory(t))
	const n = 24
	var claimed, inFlight atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var execs []*idempotency.Execution
	for range n {
		wg.Go(func() {
			<-start
			x, _, err := e.Begin(t.Context(), req("dup", "a"))
			switch {
			case err == nil && x != nil:
				claimed.Add(1)
				mu.Lock()
				execs = append(execs, x)
				mu.Unlock()
			case errors.Is(err, idempotency.ErrInFlight):
				inFlight.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	assert.EqualValues(t, 1, claimed.Load())
	assert.EqualValues(t, n-1, inFlight.Load())
	for _, x := range execs {
		require.NoError(t, x.Release())
	}
}

// claimCounter counts claims; it keeps the memory store's Waiter.
type claimCounter struct {
	*memory.Store
	claims atomic.Int64
}

func (c *claimCounter) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	c.claims.Add(1)
	return c.Store.Claim(ctx, key, token, lease)
}

func TestEngineWaitGetsTheFirstAnswer(t *testing.T) {
	t.Parallel()
	const n = 12
	tests := []struct {
		name       string
		waiter     bool
		wantClaims func(claims int64) bool
	}{
		// Woken by the completion: each duplicate claims once before it
		// waits and once after (a spurious wake-up may add one).
		{name: "waiter", waiter: true, wantClaims: func(c int64) bool { return c <= 1+3*n }},
		// Without the capability the engine polls, so claims add up.
		{name: "no waiter", wantClaims: func(c int64) bool { return c > 1+3*n }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			counter := &claimCounter{Store: newMemory(t)}
			var store idempotency.Store = counter
			if !tt.waiter {
				store = struct{ idempotency.Store }{counter}
			}
			e := idempotency.NewEngine(store, idempotency.WithWait(5*time.Second))
			x, _, err := e.Begin(t.Context(), req("w", "a"))
			require.NoError(t, err)
			results := make(chan *idempotency.Record, n)
			errs := make(chan error, n)
			for range n {
				go func() {
					_, rec, err := e.Begin(t.Context(), req("w", "a"))
					results <- rec
					errs <- err
				}()
			}
			require.Eventually(t, func() bool { return counter.claims.Load() >= 1+n }, 5*time.Second, time.Millisecond,
				"every duplicate found the key in flight")
			// The first request runs on for a while: a polling engine looks
			// several times meanwhile, a waiting one does not look at all.
			if tt.waiter {
				time.Sleep(300 * time.Millisecond)
			} else {
				require.Eventually(t, func() bool { return counter.claims.Load() > 1+3*n }, 10*time.Second, time.Millisecond,
					"the duplicates poll")
			}
			require.NoError(t, x.Complete(jsonRecord(`{"first":true}`)))
			for range n {
				require.NoError(t, <-errs)
				rec := <-results
				require.NotNil(t, rec)
				assert.Equal(t, `{"first":true}`, string(rec.Body))
			}
			claims := counter.claims.Load()
			assert.True(t, tt.wantClaims(claims), "%d claims for 1 request and %d duplicates", claims, n)
		})
	}
}

func TestEngineWaitRunsOut(t *testing.T) {
	t.Parallel()
	e := idempotency.NewEngine(newMemory(t), idempotency.WithWait(200*time.Millisecond))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	defer func() { _ = x.Release() }()
	start := time.Now()
	_, _, err = e.Begin(t.Context(), req("k", "a"))
	assert.ErrorIs(t, err, idempotency.ErrInFlight)
	assert.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	// Far above the wait: a busy machine fires timers late.
	assert.Less(t, time.Since(start), 10*time.Second)
}

func TestEngineWaitThenExecuteAfterRelease(t *testing.T) {
	t.Parallel()
	e := idempotency.NewEngine(newMemory(t), idempotency.WithWait(5*time.Second))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	done := make(chan *idempotency.Execution)
	go func() {
		x2, _, err := e.Begin(t.Context(), req("k", "a"))
		assert.NoError(t, err)
		done <- x2
	}()
	require.NoError(t, x.Release())
	x2 := <-done
	require.NotNil(t, x2, "a waiter claims a released key and runs")
	require.NoError(t, x2.Release())
}

func TestEngineRenewsTheLease(t *testing.T) {
	t.Parallel()
	// On the store's real clock: renewal every second leaves a lease of 3 s
	// two seconds for a late timer on a busy machine under -race.
	const lease = 3 * time.Second
	e := idempotency.NewEngine(newMemory(t), idempotency.WithLease(lease))
	x, _, err := e.Begin(t.Context(), req("slow", "a"))
	require.NoError(t, err)
	// Two leases long: the claim must hold throughout.
	deadline := time.Now().Add(2 * lease)
	for time.Now().Before(deadline) {
		_, _, err := e.Begin(t.Context(), req("slow", "a"))
		require.ErrorIs(t, err, idempotency.ErrInFlight)
		time.Sleep(25 * time.Millisecond)
	}
	assert.False(t, x.LeaseLost())
	require.NoError(t, x.Complete(jsonRecord(`{}`)))
	_, rec, err := e.Begin(t.Context(), req("slow", "a"))
	require.NoError(t, err)
	assert.NotNil(t, rec)
}

func TestEngineLostLeaseCannotOverwrite(t *testing.T) {
	t.Parallel()
	// A store whose renewals fail stands for a holder cut off from it.
	s := newMemory(t)
	cut := &renewlessStore{Store: s}
	first := idempotency.NewEngine(cut, idempotency.WithLease(100*time.Millisecond))
	second := idempotency.NewEngine(s, idempotency.WithLease(time.Second))

	x1, _, err := first.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	var x2 *idempotency.Execution
	require.Eventually(t, func() bool {
		x2, _, err = second.Begin(t.Context(), req("k", "a"))
		return err == nil && x2 != nil
	}, 10*time.Second, 10*time.Millisecond, "the key is claimable once the lease ran out")
	require.NoError(t, x2.Complete(jsonRecord(`{"by":"second"}`)))

	assert.ErrorIs(t, x1.Complete(jsonRecord(`{"by":"first"}`)), idempotency.ErrNotHeld)
	_, rec, err := second.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	assert.Equal(t, `{"by":"second"}`, string(rec.Body))
}

type renewlessStore struct{ idempotency.Store }

func (renewlessStore) Renew(context.Context, string, string, time.Duration) error {
	return errors.New("unreachable")
}

func TestEngineExpiredRecordRunsAnew(t *testing.T) {
	t.Parallel()
	// The seed left an in-flight marker behind after a success, so the key
	// answered 409 forever once the response expired.
	e := idempotency.NewEngine(newMemory(t), idempotency.WithExpiry(100*time.Millisecond))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	require.NoError(t, x.Complete(jsonRecord(`{}`)))
	require.Eventually(t, func() bool {
		x, _, err := e.Begin(t.Context(), req("k", "a"))
		if x != nil {
			_ = x.Release()
		}
		return err == nil && x != nil
	}, 10*time.Second, 10*time.Millisecond)
}

func TestEngineStoreUnavailable(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	s := &faultyStore{Store: newMemory(t), claimErr: errors.New("connection refused")}

	_, _, err := idempotency.NewEngine(s, idempotency.WithLogger(logger)).Begin(t.Context(), req("secret-key", "a"))
	assert.ErrorIs(t, err, idempotency.ErrStoreUnavailable)

	x, _, err := idempotency.NewEngine(s, idempotency.WithFailOpen(true), idempotency.WithLogger(logger)).
		Begin(t.Context(), req("secret-key", "a"))
	require.NoError(t, err)
	require.NotNil(t, x)
	assert.False(t, x.Protected())
	assert.NoError(t, x.Complete(jsonRecord(`{}`)))
	assert.Contains(t, logs.String(), "unprotected")
	assert.NotContains(t, logs.String(), "secret-key")
}

func TestEngineCorruptRecord(t *testing.T) {
	t.Parallel()
	for _, data := range [][]byte{[]byte(`{"v":1,"s":201,"b":"e30`), []byte("\x00\xff"), {}} {
		s := &faultyStore{Store: newMemory(t), corrupt: data}
		_, rec, err := idempotency.NewEngine(s, idempotency.WithLogger(slog.New(slog.DiscardHandler))).
			Begin(t.Context(), req("k", "a"))
		assert.ErrorIs(t, err, idempotency.ErrStoreUnavailable)
		assert.Nil(t, rec)
	}
}

func TestEngineCompleteFailureReleases(t *testing.T) {
	t.Parallel()
	s := &faultyStore{Store: newMemory(t), completeErr: errors.New("timeout")}
	e := idempotency.NewEngine(s, idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	assert.ErrorIs(t, x.Complete(jsonRecord(`{}`)), idempotency.ErrStoreUnavailable)
	assert.EqualValues(t, 1, s.releases.Load())
	x, _, err = e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err, "the claim was released, so a retry runs")
	require.NotNil(t, x)
	_ = x.Release()
}

func TestEnginePolicyReleases(t *testing.T) {
	t.Parallel()
	e := idempotency.NewEngine(newMemory(t), idempotency.WithStorePolicy(idempotency.StoreSuccess))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	require.NoError(t, x.Complete(&idempotency.Record{Status: 500}))
	x, _, err = e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	require.NotNil(t, x, "a response the policy rejects is not stored")
	require.NoError(t, x.Complete(jsonRecord(`{}`)))
	_, rec, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	assert.NotNil(t, rec)
}

func TestEngineScopesAndRoutesDoNotMeet(t *testing.T) {
	t.Parallel()
	e := idempotency.NewEngine(newMemory(t))
	for _, r := range []idempotency.Request{
		{Scope: "tenant-a", Route: "POST /a", Key: "k"},
		{Scope: "tenant-b", Route: "POST /a", Key: "k"},
		{Scope: "tenant-a", Route: "POST /b", Key: "k"},
		{Scope: "", Route: "tenant-aPOST /a", Key: "k"},
	} {
		x, _, err := e.Begin(t.Context(), r)
		require.NoError(t, err)
		require.NotNil(t, x, "%+v met another request", r)
		require.NoError(t, x.Complete(jsonRecord(`{}`)))
	}
}

// stallingStore's first renewal hangs until its context ends, as a call to
// a store that stopped answering does.
type stallingStore struct {
	idempotency.Store
	stalled atomic.Bool
}

func (s *stallingStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	if s.stalled.CompareAndSwap(false, true) {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Store.Renew(ctx, key, token, lease)
}

func TestEngineSlowRenewalKeepsTheLease(t *testing.T) {
	t.Parallel()
	// With a store timeout far above the lease, a renewal that hangs must
	// still give up in time for the next one to keep the claim. On the
	// store's real clock: the first renewal, at 2 s, gives up at 4 s, and
	// the next one leaves two seconds for a late timer on a busy machine.
	const lease = 6 * time.Second
	s := &stallingStore{Store: newMemory(t)}
	e := idempotency.NewEngine(s, idempotency.WithLease(lease),
		idempotency.WithStoreTimeout(time.Minute), idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	deadline := time.Now().Add(lease + lease/3)
	for time.Now().Before(deadline) {
		_, _, err := e.Begin(t.Context(), req("k", "a"))
		require.ErrorIs(t, err, idempotency.ErrInFlight)
		time.Sleep(50 * time.Millisecond)
	}
	assert.True(t, s.stalled.Load(), "a renewal was attempted")
	require.NoError(t, x.Complete(jsonRecord(`{}`)))
}
