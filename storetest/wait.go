package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

// waitSettle is how long a subtest lets Wait start waiting before it ends
// the claim: ending it sooner would let Wait return at once, and the subtest
// would check nothing.
const waitSettle = 200 * time.Millisecond

// promptly bounds a Wait that should return at once.
const promptly = 2 * time.Second

var errEarly = errors.New("storetest: Wait returned before the claim ended")

// wait runs the subtests of [idempotency.Waiter], if the store implements
// it.
func (st suite) wait(t *testing.T) {
	t.Parallel()
	if _, ok := st.newStore(t).(idempotency.Waiter); !ok {
		t.Skip("the store does not implement idempotency.Waiter; the wait tests do not apply")
	}
	t.Run("NoLiveClaim", st.waitNoLiveClaim)
	t.Run("ClaimEnds", st.waitClaimEnds)
	t.Run("LeaseRunsOut", st.waitLeaseRunsOut)
	t.Run("ContextEnds", st.waitContextEnds)
	t.Run("ManyWaiters", st.waitManyWaiters)
}

// startWaiter is [suite.start] for a subtest of the waiter.
func (st suite) startWaiter(t *testing.T) (idempotency.Store, idempotency.Waiter) {
	t.Helper()
	s := st.start(t)
	w, ok := s.(idempotency.Waiter)
	require.True(t, ok, "the store stopped implementing idempotency.Waiter")
	return s, w
}

// waitNoLiveClaim checks that Wait returns at once when the key holds
// no live claim.
func (st suite) waitNoLiveClaim(t *testing.T) {
	s, w := st.startWaiter(t)
	tests := []struct {
		name    string
		prepare func(t *testing.T, key string) // sets up what key holds
	}{
		{name: "absent", prepare: func(*testing.T, string) {}},
		{name: "completed", prepare: func(t *testing.T, key string) {
			t.Helper()
			token := holdClaim(t, s, key, longTTL)
			require.NoError(t, s.Complete(t.Context(), key, token, []byte("done"), longTTL))
		}},
		{name: "released", prepare: func(t *testing.T, key string) {
			t.Helper()
			token := holdClaim(t, s, key, longTTL)
			require.NoError(t, s.Release(t.Context(), key, token))
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
			ctx, cancel := context.WithTimeout(t.Context(), promptly)
			defer cancel()
			assert.NoError(t, w.Wait(ctx, key))
		})
	}
}

// waitClaimEnds checks that Wait on an in-flight key returns once the
// claim is completed or released, and not before.
func (st suite) waitClaimEnds(t *testing.T) {
	s, w := st.startWaiter(t)
	tests := []struct {
		name string
		end  func(ctx context.Context, key, token string) error
	}{
		{name: "completed", end: func(ctx context.Context, key, token string) error {
			return s.Complete(ctx, key, token, []byte("done"), longTTL)
		}},
		{name: "released", end: func(ctx context.Context, key, token string) error {
			return s.Release(ctx, key, token)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			token := holdClaim(t, s, key, longTTL)
			ended := make(chan struct{})
			done := startWait(t.Context(), w, key, ended)
			time.Sleep(waitSettle)
			close(ended)
			require.NoError(t, tt.end(t.Context(), key, token))
			assertReturns(t, done, patience, nil)
		})
	}
}

// waitLeaseRunsOut checks that Wait returns when the claim's lease runs
// out, though nobody calls the store.
func (st suite) waitLeaseRunsOut(t *testing.T) {
	s, w := st.startWaiter(t)
	key := Key()
	holdClaim(t, s, key, shortTTL)
	assertReturns(t, startWait(t.Context(), w, key, nil), shortTTL+patience, nil)
}

// waitContextEnds checks that Wait returns its context's error when the
// context ends before the claim does, and leaves the claim alone.
func (st suite) waitContextEnds(t *testing.T) {
	s, w := st.startWaiter(t)
	tests := []struct {
		name    string
		ctx     func(parent context.Context) (context.Context, context.CancelFunc)
		wantErr error
	}{
		{
			name: "cancelled while waiting",
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(parent)
				time.AfterFunc(waitSettle, cancel)
				return ctx, cancel
			},
			wantErr: context.Canceled,
		},
		{
			name: "deadline while waiting",
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				return context.WithTimeout(parent, waitSettle)
			},
			wantErr: context.DeadlineExceeded,
		},
		{
			name: "cancelled before",
			ctx: func(parent context.Context) (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(parent)
				cancel()
				return ctx, cancel
			},
			wantErr: context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := Key()
			holdClaim(t, s, key, longTTL)
			ctx, cancel := tt.ctx(t.Context())
			defer cancel()
			assertReturns(t, startWait(ctx, w, key, nil), patience, tt.wantErr)
			assertInFlight(t, s, key)
		})
	}
}

// waitManyWaiters checks that ending a claim wakes every waiter.
func (st suite) waitManyWaiters(t *testing.T) {
	s, w := st.startWaiter(t)
	const n = 10
	key := Key()
	token := holdClaim(t, s, key, longTTL)
	ended := make(chan struct{})
	waits := make([]<-chan error, n)
	for i := range waits {
		waits[i] = startWait(t.Context(), w, key, ended)
	}
	time.Sleep(waitSettle)
	close(ended)
	require.NoError(t, s.Complete(t.Context(), key, token, []byte("done"), longTTL))
	deadline := time.Now().Add(patience)
	for _, done := range waits {
		assertReturns(t, done, time.Until(deadline), nil)
	}
}

// startWait calls Wait in a goroutine and delivers its error. If ended is
// not nil, a nil error before ended is closed becomes errEarly.
func startWait(ctx context.Context, w idempotency.Waiter, key string, ended <-chan struct{}) <-chan error {
	done := make(chan error, 1)
	go func() {
		err := w.Wait(ctx, key)
		if err == nil && ended != nil {
			select {
			case <-ended:
			default:
				err = errEarly
			}
		}
		done <- err
	}()
	return done
}

// assertReturns checks that the Wait behind done returns within d, with an
// error that is wantErr (nil: no error).
func assertReturns(t *testing.T, done <-chan error, d time.Duration, wantErr error) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		if wantErr == nil {
			assert.NoError(t, err, "Wait")
		} else {
			assert.ErrorIs(t, err, wantErr, "Wait")
		}
	case <-timer.C:
		assert.Failf(t, "Wait did not return", "still waiting after %v", d)
	}
}
