package redisstore_test

import (
	"context"
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

// TestAdminRoundTrips checks that Inspect and Forget each cost one round
// trip, once Redis has their scripts cached.
func TestAdminRoundTrips(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	counter := redistest.NewCounter(c)
	s, _ := newStore(t, c)
	ctx := t.Context()
	// Loads the scripts.
	_, err := s.Inspect(ctx, storetest.Key())
	require.NoError(t, err)
	_, err = s.Forget(ctx, storetest.Key())
	require.NoError(t, err)

	key := storetest.Key()
	complete(t, s, key, []byte("r"), time.Minute)
	counter.Reset()
	e, err := s.Inspect(ctx, key)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateCompleted, e.State)
	assert.Equal(t, []string{"evalsha"}, counter.Names(), "Inspect")

	counter.Reset()
	ok, err := s.Forget(ctx, key)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, []string{"evalsha"}, counter.Names(), "Forget")
}

// TestCountExact counts a prefix that holds more keys than one SCAN call
// returns, next to keys that are not the store's.
func TestCountExact(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	base := redistest.Prefix(t, c)
	ctx := t.Context()
	// The prefix has the characters that MATCH reads as a pattern; a
	// sibling prefix that the unescaped pattern would match holds keys
	// that must not be counted.
	prefix := base + `a*?[b]\:`
	sibling := base + `aZZb\:`
	s := newStoreWithPrefix(t, c, prefix)

	const claims, marked, records = 1500, 3, 1100
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for range claims {
			p.Set(ctx, prefix+storetest.Key(), "c"+newToken(), time.Minute)
		}
		for range marked {
			p.Set(ctx, prefix+storetest.Key(), "w"+newToken(), time.Minute)
		}
		for range records {
			p.Set(ctx, prefix+storetest.Key(), "d{}", 0)
		}
		// Not the store's: another prefix, another type, another tag, an
		// expired claim.
		p.Set(ctx, sibling+storetest.Key(), "c"+newToken(), time.Minute)
		p.HSet(ctx, prefix+"hash", "f", "v")
		p.Set(ctx, prefix+"foreign", "zzz", time.Minute)
		p.Set(ctx, prefix+"expired", "c"+newToken(), time.Millisecond)
		return nil
	})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		n, err := c.Exists(ctx, prefix+"expired").Result()
		return err == nil && n == 0
	}, 5*time.Second, time.Millisecond)

	got, err := s.Count(ctx)
	require.NoError(t, err)
	assert.Equal(t, idempotency.Counts{Claims: claims + marked, Records: records}, got)
}

// TestCountCluster checks that Count walks every master of a Cluster.
func TestCountCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t)
	c := cl.Client(t)
	s, prefix := newStore(t, c)
	ctx := t.Context()
	const claims, records = 40, 30
	masters := map[string]bool{}
	for i := range claims + records {
		key, token := storetest.Key(), newToken()
		res, err := s.Claim(ctx, key, token, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.StateClaimed, res.State)
		if i >= claims {
			require.NoError(t, s.Complete(ctx, key, token, []byte("r"), time.Minute))
		}
		node, err := c.MasterForKey(ctx, prefix+key)
		require.NoError(t, err)
		masters[node.Options().Addr] = true
	}
	require.Len(t, masters, 3, "the keys must spread over the three masters")
	got, err := s.Count(ctx)
	require.NoError(t, err)
	assert.Equal(t, idempotency.Counts{Claims: claims, Records: records}, got)
}

// TestInspectForeignValues checks that a key that holds what this package
// never writes is an error, not an entry.
func TestInspectForeignValues(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, prefix := newStore(t, c)
	ctx := t.Context()
	tests := []struct {
		name  string
		write func(rkey string) error
	}{
		{name: "unknown tag", write: func(rkey string) error { return c.Set(ctx, rkey, "zzz", time.Minute).Err() }},
		{name: "empty string", write: func(rkey string) error { return c.Set(ctx, rkey, "", time.Minute).Err() }},
		{name: "hash", write: func(rkey string) error { return c.HSet(ctx, rkey, "f", "v").Err() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := storetest.Key()
			require.NoError(t, tt.write(prefix+key))
			_, err := s.Inspect(ctx, key)
			assert.Error(t, err)
		})
	}
}

// TestInspectTTL checks the time left that Inspect reads from Redis.
func TestInspectTTL(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, prefix := newStore(t, c)
	ctx := t.Context()
	tests := []struct {
		name      string
		value     string
		ttl       time.Duration
		wantState idempotency.State
		wantTTL   time.Duration // at most; zero: exactly zero
	}{
		{name: "claim", value: "ctoken", ttl: time.Hour, wantState: idempotency.StateInFlight, wantTTL: time.Hour},
		{name: "marked claim", value: "wtoken", ttl: time.Hour, wantState: idempotency.StateInFlight, wantTTL: time.Hour},
		{name: "claim without TTL", value: "ctoken", wantState: idempotency.StateInFlight},
		{name: "record", value: "d{}", ttl: 24 * time.Hour, wantState: idempotency.StateCompleted, wantTTL: 24 * time.Hour},
		{name: "record without expiry", value: "d{}", wantState: idempotency.StateCompleted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key := storetest.Key()
			require.NoError(t, c.Set(ctx, prefix+key, tt.value, tt.ttl).Err())
			e, err := s.Inspect(ctx, key)
			require.NoError(t, err)
			assert.Equal(t, tt.wantState, e.State)
			if tt.wantTTL == 0 {
				assert.Zero(t, e.TTL)
				return
			}
			assert.LessOrEqual(t, e.TTL, tt.wantTTL)
			assert.Greater(t, e.TTL, tt.wantTTL-time.Minute)
		})
	}
}

// TestForgetWakesWaiterPromptly checks that forgetting a claim that a
// waiter marked publishes its wake-up: the waiter returns long before the
// poll interval.
func TestForgetWakesWaiterPromptly(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, prefix := newStore(t, c, redisstore.WithPollInterval(noPoll))
	ctx := t.Context()
	key := storetest.Key()
	_, err := s.Claim(ctx, key, newToken(), noPoll)
	require.NoError(t, err)
	done := startWait(ctx, s, key)
	awaitMarked(t, c, prefix+key)
	start := time.Now()
	ok, err := s.Forget(ctx, key)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, receive(t, done, 5*time.Second))
	assert.Less(t, time.Since(start), time.Second, "woken by a message, not the poll")
}

// TestForgetLocalCache checks that a store with a local cache does not
// replay a record it forgot.
func TestForgetLocalCache(t *testing.T) {
	t.Parallel()
	s, counter, _ := cachedStore(t, 10)
	key := storetest.Key()
	complete(t, s, key, []byte("r"), time.Minute)
	res, trips := claimCounted(t, s, counter, key)
	require.Equal(t, idempotency.StateCompleted, res.State)
	require.Empty(t, trips, "the record is in the cache")

	ok, err := s.Forget(t.Context(), key)
	require.NoError(t, err)
	require.True(t, ok)
	res, _ = claimCounted(t, s, counter, key)
	assert.Equal(t, idempotency.StateClaimed, res.State, "the next request runs")
}

// TestCountCanceled checks that Count returns its context's error.
func TestCountCanceled(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, _ := newStore(t, c)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Count(ctx)
	assert.ErrorIs(t, err, context.Canceled)
}
