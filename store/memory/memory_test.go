package memory_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
	"github.com/idemkey/idempotency/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newStore(t *testing.T, opts ...memory.Option) *memory.Store {
	t.Helper()
	s := memory.New(opts...)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) idempotency.Store {
		t.Helper()
		return newStore(t)
	})
}

func TestWithMaxRecordsPanics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		n    int
	}{
		{name: "zero", n: 0},
		{name: "negative", n: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.PanicsWithValue(t,
				fmt.Sprintf("memory: WithMaxRecords(%d): the maximum must be positive", tt.n),
				func() { memory.New(memory.WithMaxRecords(tt.n)) })
		})
	}
}

func TestFull(t *testing.T) {
	t.Parallel()
	const maxRecords = 100
	tests := []struct {
		name string
		// fill puts one entry under key that lives for ttl.
		fill func(t *testing.T, s *memory.Store, key string, ttl time.Duration)
	}{
		{name: "claims", fill: func(t *testing.T, s *memory.Store, key string, ttl time.Duration) {
			t.Helper()
			claim(t, s, key, ttl)
		}},
		{name: "records", fill: func(t *testing.T, s *memory.Store, key string, ttl time.Duration) {
			t.Helper()
			token := claim(t, s, key, time.Hour)
			require.NoError(t, s.Complete(t.Context(), key, token, []byte(key), ttl))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const ttl = 200 * time.Millisecond
			s := newStore(t, memory.WithMaxRecords(maxRecords))

			// Half the entries outlive the test, half expire soon.
			var lasting, expiring []string
			for i := range maxRecords {
				key := storetest.Key()
				if i%2 == 0 {
					tt.fill(t, s, key, time.Hour)
					lasting = append(lasting, key)
				} else {
					tt.fill(t, s, key, ttl)
					expiring = append(expiring, key)
				}
			}
			_, err := s.Claim(t.Context(), storetest.Key(), "token", time.Hour)
			require.ErrorIs(t, err, memory.ErrFull, "claim in a full store")
			assert.Contains(t, err.Error(), "100 records")

			// A key the store holds is still answered.
			res, err := s.Claim(t.Context(), lasting[0], "token", time.Hour)
			require.NoError(t, err)
			assert.NotEqual(t, idempotency.StateClaimed, res.State)

			// Once half the entries expired, there is room for as many
			// claims, and no more: nothing that lives was evicted.
			time.Sleep(ttl)
			for range expiring {
				claim(t, s, storetest.Key(), time.Hour)
			}
			_, err = s.Claim(t.Context(), storetest.Key(), "token", time.Hour)
			require.ErrorIs(t, err, memory.ErrFull, "claim in a store full again")
			for _, key := range lasting {
				res, err := s.Claim(t.Context(), key, "token", time.Hour)
				require.NoError(t, err)
				assert.NotEqual(t, idempotency.StateClaimed, res.State, "a live entry was evicted")
			}
		})
	}
}

func TestFullReleaseMakesRoom(t *testing.T) {
	t.Parallel()
	s := newStore(t, memory.WithMaxRecords(1))
	key := storetest.Key()
	token := claim(t, s, key, time.Hour)
	_, err := s.Claim(t.Context(), storetest.Key(), "token", time.Hour)
	require.ErrorIs(t, err, memory.ErrFull)

	// Releasing the one claim makes room for another.
	require.NoError(t, s.Release(t.Context(), key, token))
	claim(t, s, storetest.Key(), time.Hour)
}

func TestFullConcurrent(t *testing.T) {
	t.Parallel()
	const (
		maxRecords = 500
		workers    = 8
	)
	s := newStore(t, memory.WithMaxRecords(maxRecords))
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		claimed int
	)
	start := make(chan struct{})
	for range workers {
		wg.Go(func() {
			<-start
			for range maxRecords {
				_, err := s.Claim(t.Context(), storetest.Key(), "token", time.Hour)
				if err == nil {
					mu.Lock()
					claimed++
					mu.Unlock()
					continue
				}
				assert.ErrorIs(t, err, memory.ErrFull)
			}
		})
	}
	close(start)
	wg.Wait()
	assert.Equal(t, maxRecords, claimed, "claims accepted by a store of %d", maxRecords)
}

func TestExpiredClaimTakeover(t *testing.T) {
	t.Parallel()
	// With the store full of one expired claim, the same key is claimed
	// anew, and so is another key.
	tests := []struct {
		name    string
		sameKey bool
	}{
		{name: "same key", sameKey: true},
		{name: "other key", sameKey: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t, memory.WithMaxRecords(1))
			key := storetest.Key()
			claim(t, s, key, time.Millisecond)
			time.Sleep(5 * time.Millisecond)
			if !tt.sameKey {
				key = storetest.Key()
			}
			claim(t, s, key, time.Hour)
		})
	}
}

func TestInvalidDurations(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	key := storetest.Key()
	tests := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{name: "claim with zero lease", call: func(ctx context.Context) error {
			_, err := s.Claim(ctx, key, "token", 0)
			return err
		}},
		{name: "renew with negative lease", call: func(ctx context.Context) error {
			return s.Renew(ctx, key, "token", -time.Second)
		}},
		{name: "complete with negative expiry", call: func(ctx context.Context) error {
			return s.Complete(ctx, key, "token", []byte("x"), -time.Second)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.call(t.Context())
			require.Error(t, err)
			assert.NotErrorIs(t, err, idempotency.ErrNotHeld)
			assert.Contains(t, err.Error(), "memory: ")
		})
	}
}

func TestHugeDurations(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	key := storetest.Key()
	token := claim(t, s, key, time.Duration(1<<63-1))
	res, err := s.Claim(t.Context(), key, "other", time.Hour)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateInFlight, res.State, "a lease that does not fit the clock must not wrap around")
	assert.Positive(t, res.LeaseLeft)
	require.NoError(t, s.Complete(t.Context(), key, token, []byte("x"), time.Duration(1<<63-1)))
	res, err = s.Claim(t.Context(), key, "other", time.Hour)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateCompleted, res.State, "an expiry that does not fit the clock must not wrap around")
}

func TestCloseTwice(t *testing.T) {
	t.Parallel()
	s := memory.New()
	claim(t, s, storetest.Key(), time.Hour)
	assert.NoError(t, s.Close())
	assert.NoError(t, s.Close())
}

func TestWaitLeavesNoGoroutine(t *testing.T) {
	// Not parallel: it counts the goroutines of the whole test binary.
	defer goleak.VerifyNone(t)
	s := memory.New()
	defer s.Close()
	key := storetest.Key()
	token := claim(t, s, key, time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Wait(ctx, key) }()
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
	go func() { done <- s.Wait(t.Context(), key) }()
	// Lets Wait start its timer, the thing that could leak, before the
	// claim ends; the test passes either way.
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, s.Complete(t.Context(), key, token, []byte("done"), time.Hour))
	assert.NoError(t, <-done)
}

// claim claims key, which must be claimable, and returns the token.
func claim(t *testing.T, s *memory.Store, key string, lease time.Duration) string {
	t.Helper()
	token := storetest.Key()
	res, err := s.Claim(t.Context(), key, token, lease)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateClaimed, res.State)
	return token
}
