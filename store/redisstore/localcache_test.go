package redisstore_test

import (
	"bytes"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
	"github.com/idemkey/idempotency/storetest"
)

// cachedStore returns a store with a local cache of maxEntries under a
// prefix of the test's own, on a client of its own whose round trips the
// returned counter counts.
func cachedStore(t *testing.T, maxEntries int) (*redisstore.Store, *redistest.Counter, string) {
	t.Helper()
	c := redistest.Client(t)
	counter := redistest.NewCounter(c)
	s, prefix := newStore(t, c, redisstore.WithLocalCache(maxEntries))
	warmUp(t, s)
	return s, counter, prefix
}

// claimCounted claims key with a new token and returns the answer and the
// round trips it cost.
func claimCounted(t *testing.T, s *redisstore.Store, counter *redistest.Counter, key string) (idempotency.ClaimResult, []string) {
	t.Helper()
	counter.Reset()
	res, err := s.Claim(t.Context(), key, newToken(), time.Minute)
	require.NoError(t, err)
	return res, counter.Names()
}

// complete claims key on s and completes it with record.
func complete(t *testing.T, s idempotency.Store, key string, record []byte, expiry time.Duration) {
	t.Helper()
	token := newToken()
	res, err := s.Claim(t.Context(), key, token, time.Minute)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateClaimed, res.State)
	require.NoError(t, s.Complete(t.Context(), key, token, record, expiry))
}

// TestLocalCacheRoundTrips: a replay of a record that the store completed,
// or has found once, costs no round trip.
func TestLocalCacheRoundTrips(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		expiry time.Duration
	}{
		{name: "expiring", expiry: time.Minute},
		{name: "never expiring", expiry: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, counter, prefix := cachedStore(t, 100)
			other := newStoreWithPrefix(t, redistest.Client(t), prefix)
			record := []byte(`{"status":201}`)

			t.Run("completed here", func(t *testing.T) {
				key := storetest.Key()
				complete(t, s, key, record, tt.expiry)
				for i := range 2 {
					res, trips := claimCounted(t, s, counter, key)
					assert.Equal(t, idempotency.StateCompleted, res.State)
					assert.Equal(t, record, res.Record)
					assert.Empty(t, trips, "replay %d", i+1)
				}
			})
			t.Run("completed elsewhere", func(t *testing.T) {
				key := storetest.Key()
				complete(t, other, key, record, tt.expiry)
				wantTrips := [][]string{{"evalsha"}, nil, nil}
				for i, want := range wantTrips {
					res, trips := claimCounted(t, s, counter, key)
					assert.Equal(t, idempotency.StateCompleted, res.State)
					assert.Equal(t, record, res.Record)
					assert.Equal(t, want, trips, "replay %d", i+1)
				}
			})
			t.Run("not completed", func(t *testing.T) {
				key := storetest.Key()
				for _, want := range []idempotency.State{idempotency.StateClaimed, idempotency.StateInFlight, idempotency.StateInFlight} {
					res, trips := claimCounted(t, s, counter, key)
					assert.Equal(t, want, res.State)
					assert.Equal(t, []string{"evalsha"}, trips, "a claim in flight is never cached")
				}
			})
		})
	}
}

// TestLocalCacheHitAllocations: a claim answered from the cache allocates
// nothing. It does not run in parallel: AllocsPerRun counts every
// goroutine's allocations.
func TestLocalCacheHitAllocations(t *testing.T) {
	s, counter, _ := cachedStore(t, 10)
	key, token := storetest.Key(), newToken()
	complete(t, s, key, []byte("record"), time.Minute)
	ctx := t.Context()
	counter.Reset()
	allocs := testing.AllocsPerRun(100, func() {
		res, err := s.Claim(ctx, key, token, time.Minute)
		if err != nil || res.State != idempotency.StateCompleted {
			t.Errorf("Claim = %v, %v", res, err)
		}
	})
	assert.Zero(t, allocs, "allocations per cached claim")
	assert.Zero(t, counter.Count(), "round trips")
}

// TestLocalCacheExpiry: an entry ends with its record, never later: once
// Redis has expired the record, the cached store claims the key.
func TestLocalCacheExpiry(t *testing.T) {
	t.Parallel()
	// Long enough that the record is still there when the test first
	// claims it, on a busy machine under -race.
	const expiry = 2 * time.Second
	tests := []struct {
		name string
		// completeElsewhere completes through another store, so that the
		// cached store learns the record, and its TTL, from a claim.
		completeElsewhere bool
	}{
		{name: "completed here"},
		{name: "found by a claim", completeElsewhere: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, counter, prefix := cachedStore(t, 100)
			// A client without the counter looks at Redis directly.
			c := redistest.Client(t)
			other := newStoreWithPrefix(t, c, prefix)
			key := storetest.Key()
			record := []byte("expiring")
			if tt.completeElsewhere {
				complete(t, other, key, record, expiry)
				res, trips := claimCounted(t, s, counter, key)
				require.Equal(t, idempotency.StateCompleted, res.State)
				require.Equal(t, []string{"evalsha"}, trips)
			} else {
				complete(t, s, key, record, expiry)
			}
			res, trips := claimCounted(t, s, counter, key)
			require.Equal(t, idempotency.StateCompleted, res.State)
			require.Empty(t, trips, "the record must be cached before its expiry")

			deadline := time.Now().Add(expiry + 5*time.Second)
			hits := 0
			for {
				// Redis first, then the cache: once Redis has dropped the
				// record, the cache must not have it either.
				n, err := c.Exists(t.Context(), prefix+key).Result()
				require.NoError(t, err)
				res, trips := claimCounted(t, s, counter, key)
				if len(trips) == 0 {
					hits++
				}
				if n == 0 {
					assert.Equal(t, idempotency.StateClaimed, res.State,
						"Redis had expired the record, yet the cached store answered %v", res.State)
					break
				}
				if res.State == idempotency.StateClaimed {
					// Redis expired the record between the two looks.
					break
				}
				require.Equal(t, idempotency.StateCompleted, res.State)
				require.True(t, time.Now().Before(deadline), "the record never expired")
				time.Sleep(5 * time.Millisecond)
			}
			t.Logf("%d answers from the cache before the record expired", hits)
		})
	}
}

// TestLocalCacheBound: the cache holds no more records than it may, and
// keeps the most recent one.
func TestLocalCacheBound(t *testing.T) {
	t.Parallel()
	const (
		maxEntries = 8
		keys       = 100
	)
	s, counter, _ := cachedStore(t, maxEntries)
	names := make([]string, keys)
	for i := range names {
		names[i] = storetest.Key()
		complete(t, s, names[i], []byte("record "+strconv.Itoa(i)), time.Minute)
	}

	res, trips := claimCounted(t, s, counter, names[keys-1])
	require.Equal(t, idempotency.StateCompleted, res.State)
	assert.Empty(t, trips, "the record completed last is cached")
	hits := 0
	for _, key := range names {
		// A miss caches its record in turn, which may only evict others:
		// the hits still count no more than the cache can hold.
		res, trips := claimCounted(t, s, counter, key)
		require.Equal(t, idempotency.StateCompleted, res.State)
		if len(trips) == 0 {
			hits++
		}
	}
	assert.LessOrEqual(t, hits, maxEntries, "records answered from the cache")
}

// TestLocalCacheLargeRecords: records over 64 KiB are not cached.
func TestLocalCacheLargeRecords(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		size      int
		wantTrips []string
	}{
		{name: "64 KiB", size: 64 << 10, wantTrips: nil},
		{name: "one byte more", size: 64<<10 + 1, wantTrips: []string{"evalsha"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, counter, _ := cachedStore(t, 10)
			key := storetest.Key()
			record := bytes.Repeat([]byte{'x'}, tt.size)
			complete(t, s, key, record, time.Minute)
			for range 2 {
				res, trips := claimCounted(t, s, counter, key)
				assert.Equal(t, idempotency.StateCompleted, res.State)
				assert.Equal(t, record, res.Record)
				assert.Equal(t, tt.wantTrips, trips)
			}
		})
	}
}

// TestLocalCacheDeletedRecord documents the cache's trade-off: a record
// deleted from Redis before its expiry is still replayed from the cache,
// while a store without one claims the key anew.
func TestLocalCacheDeletedRecord(t *testing.T) {
	t.Parallel()
	s, counter, prefix := cachedStore(t, 10)
	c := redistest.Client(t)
	plain := newStoreWithPrefix(t, c, prefix)
	key := storetest.Key()
	record := []byte("deleted behind the store's back")
	complete(t, s, key, record, time.Minute)
	require.NoError(t, c.Del(t.Context(), prefix+key).Err())

	res, trips := claimCounted(t, s, counter, key)
	assert.Equal(t, idempotency.StateCompleted, res.State, "replayed from the cache")
	assert.Equal(t, record, res.Record)
	assert.Empty(t, trips)

	res, err := plain.Claim(t.Context(), key, newToken(), time.Minute)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateClaimed, res.State, "Redis itself holds nothing")
}

// TestLocalCacheConformance runs the conformance suite with the cache on,
// on RESP2 and RESP3.
func TestLocalCacheConformance(t *testing.T) {
	t.Parallel()
	for _, protocol := range []int{2, 3} {
		t.Run("RESP"+strconv.Itoa(protocol), func(t *testing.T) {
			t.Parallel()
			c := redistest.NewClient(t, &redis.Options{Addr: redistest.Addr(t), Protocol: protocol})
			storetest.Run(t, func(t *testing.T) idempotency.Store {
				s, _ := newStore(t, c, redisstore.WithLocalCache(1000))
				return s
			})
		})
	}
}
