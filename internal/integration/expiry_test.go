package integration

import (
	"context"
	"errors"
	"math"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/redistest"
)

// TestExpiryByRedisClock checks SPEC §5.3: a record lives exactly as long
// as Redis keeps it. Redis expires it after WithExpiry; and when Redis's
// own TTL of the record is changed behind the engine's back, the engine
// follows Redis, not the expiry it asked for.
func TestExpiryByRedisClock(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		expiry time.Duration
		// adjust changes the record's key in Redis after it was stored.
		adjust func(ctx context.Context, c *redis.Client, rkey string) error
		// hold is how long the record is asked for after it was stored.
		hold time.Duration
		// wantExecuted says whether the key runs anew within hold.
		wantExecuted bool
		// wantAfter is the least time, from the first request, before the
		// key runs anew.
		wantAfter time.Duration
	}{
		{
			// Expiries of seconds: the replay before the expiry and the
			// PERSIST below must come in time on a busy machine under -race.
			name:         "Redis expires the record after WithExpiry",
			expiry:       4 * time.Second,
			hold:         10 * time.Second,
			wantExecuted: true,
			wantAfter:    4 * time.Second,
		},
		{
			name:   "Redis expiring it early wins over a long WithExpiry",
			expiry: time.Hour,
			adjust: func(ctx context.Context, c *redis.Client, rkey string) error {
				changed, err := c.PExpire(ctx, rkey, 50*time.Millisecond).Result()
				if err == nil && !changed {
					err = errors.New("the record is gone before PEXPIRE")
				}
				return err
			},
			hold:         5 * time.Second,
			wantExecuted: true,
		},
		{
			name:   "Redis keeping it wins over a short WithExpiry",
			expiry: 3 * time.Second,
			adjust: func(ctx context.Context, c *redis.Client, rkey string) error {
				kept, err := c.Persist(ctx, rkey).Result()
				if err == nil && !kept {
					err = errors.New("the record expired before PERSIST")
				}
				return err
			},
			hold:         4 * time.Second,
			wantExecuted: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := redistest.Client(t)
			prefix := redistest.Prefix(t, c)
			var runs atomic.Int64
			in := startHTTP(t, newStore(t, c, prefix), func(w http.ResponseWriter, _ *http.Request) {
				writeJSON(w, chargeJSON("exp", runs.Add(1)))
			}, idempotency.WithExpiry(tt.expiry))

			key := newKey()
			sent := time.Now()
			first := in.post(t, key)
			assertExecuted(t, first)

			keys := redisKeys(t, c, prefix)
			require.Len(t, keys, 1, "one record under the test's prefix")
			ttl, err := c.PTTL(t.Context(), keys[0]).Result()
			require.NoError(t, err)
			assert.Positive(t, ttl, "the record has a TTL in Redis")
			assert.LessOrEqual(t, ttl, tt.expiry, "Redis's TTL is the expiry asked for")
			if tt.adjust != nil {
				require.NoError(t, tt.adjust(t.Context(), c, keys[0]))
			} else {
				assertReplayOf(t, first, in.post(t, key), "before the expiry")
			}

			// Ask until the key runs anew or hold has passed; each answer
			// before that must be the replay.
			deadline := sent.Add(tt.hold)
			executed := false
			for time.Now().Before(deadline) {
				a := in.post(t, key)
				if !a.replayed() {
					assertExecuted(t, a)
					executed = true
					break
				}
				assertReplayOf(t, first, a)
				time.Sleep(25 * time.Millisecond) // the poll's pace, not a synchronisation
			}
			elapsed := time.Since(sent)
			assert.Equal(t, tt.wantExecuted, executed, "ran anew within %v", tt.hold)
			if tt.wantExecuted {
				assert.GreaterOrEqual(t, elapsed, tt.wantAfter, "ran anew before Redis expired the record")
				assert.Equal(t, int64(2), runs.Load())
			} else {
				assert.Equal(t, int64(1), runs.Load())
			}
		})
	}
}

// TestHugeDurations checks SPEC §8.1 end to end: a lease and an expiry of
// math.MaxInt64, longer than Redis can represent, protect requests as any
// other would: the first request runs once and its retries are replays,
// rather than 503s or runs anew.
func TestHugeDurations(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts []idempotency.Option
	}{
		{name: "lease", opts: []idempotency.Option{idempotency.WithLease(math.MaxInt64)}},
		{name: "expiry", opts: []idempotency.Option{idempotency.WithExpiry(math.MaxInt64)}},
		{name: "both", opts: []idempotency.Option{idempotency.WithLease(math.MaxInt64), idempotency.WithExpiry(math.MaxInt64)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := redistest.Client(t)
			prefix := redistest.Prefix(t, c)
			var runs atomic.Int64
			in := startHTTP(t, newStore(t, c, prefix), func(w http.ResponseWriter, _ *http.Request) {
				writeJSON(w, chargeJSON("huge", runs.Add(1)))
			}, tt.opts...)

			key := newKey()
			first := in.post(t, key)
			assertExecuted(t, first)
			for i := range 3 {
				assertReplayOf(t, first, in.post(t, key), "retry %d", i)
			}
			assert.Equal(t, int64(1), runs.Load(), "handler runs")
		})
	}
}
