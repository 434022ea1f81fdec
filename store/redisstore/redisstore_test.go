package redisstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"math"
	"strings"
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

func TestMain(m *testing.M) { redistest.Main(m) }

// newStore returns a store on c under a prefix of the test's own, logging
// to the test's output and closed when the test ends.
func newStore(t testing.TB, c redis.UniversalClient, opts ...redisstore.Option) (*redisstore.Store, string) {
	t.Helper()
	prefix := redistest.Prefix(t, c)
	return newStoreWithPrefix(t, c, prefix, opts...), prefix
}

func newStoreWithPrefix(t testing.TB, c redis.UniversalClient, prefix string, opts ...redisstore.Option) *redisstore.Store {
	t.Helper()
	opts = append([]redisstore.Option{
		redisstore.WithPrefix(prefix),
		redisstore.WithLogger(slog.New(slog.NewTextHandler(t.Output(), nil))),
	}, opts...)
	s := redisstore.New(c, opts...)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

func newToken() string { return rand.Text() }

func TestConformance(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		protocol int
	}{
		{name: "RESP3", protocol: 3},
		{name: "RESP2", protocol: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := redistest.NewClient(t, &redis.Options{Addr: redistest.Addr(t), Protocol: tt.protocol})
			storetest.Run(t, func(t *testing.T) idempotency.Store {
				s, _ := newStore(t, c)
				return s
			})
		})
	}
}

func TestEmptyPrefix(t *testing.T) {
	t.Parallel()
	ca, cb := redistest.Client(t), redistest.Client(t)
	a := newStoreWithPrefix(t, ca, "")
	b := newStoreWithPrefix(t, cb, "", redisstore.WithPollInterval(noPoll))
	ctx := t.Context()
	key, token := storetest.Key(), newToken()
	t.Cleanup(func() { ca.Del(context.Background(), key) })

	_, err := a.Claim(ctx, key, token, time.Minute)
	require.NoError(t, err)
	n, err := ca.Exists(ctx, key).Result()
	require.NoError(t, err)
	assert.Equal(t, int64(1), n, "with the empty prefix, the storage key is the Redis key")

	done := startWait(ctx, b, key)
	awaitMarked(t, ca, key)
	require.NoError(t, a.Complete(ctx, key, token, []byte("r"), time.Minute))
	require.NoError(t, receive(t, done, 5*time.Second), "wake-ups work with the empty prefix")
}

func TestDefaultPrefix(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s := redisstore.New(c)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	key := storetest.Key()
	t.Cleanup(func() { c.Del(context.Background(), redisstore.DefaultPrefix+key) })

	_, err := s.Claim(t.Context(), key, newToken(), time.Minute)
	require.NoError(t, err)
	n, err := c.Exists(t.Context(), redisstore.DefaultPrefix+key).Result()
	require.NoError(t, err)
	assert.Equal(t, int64(1), n, "the claim must be stored under \"idempotency:\" and the storage key")
}

// TestRoundTrips counts what a client sends per store call, as the engine's
// promise of one round trip per decision needs: one command each, once
// Redis has the scripts cached.
func TestRoundTrips(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	counter := redistest.NewCounter(c)
	s, _ := newStore(t, c)
	ctx := t.Context()
	warmUp(t, s)

	key := storetest.Key()
	token := newToken()
	steps := []struct {
		name string
		call func() error
	}{
		{name: "claim fresh", call: func() error {
			res, err := s.Claim(ctx, key, token, time.Minute)
			assert.Equal(t, idempotency.StateClaimed, res.State)
			return err
		}},
		{name: "claim in flight", call: func() error {
			res, err := s.Claim(ctx, key, newToken(), time.Minute)
			assert.Equal(t, idempotency.StateInFlight, res.State)
			return err
		}},
		{name: "renew", call: func() error { return s.Renew(ctx, key, token, time.Minute) }},
		{name: "complete", call: func() error { return s.Complete(ctx, key, token, []byte(`{}`), time.Minute) }},
		{name: "claim completed", call: func() error {
			res, err := s.Claim(ctx, key, newToken(), time.Minute)
			assert.Equal(t, idempotency.StateCompleted, res.State)
			return err
		}},
		{name: "renew completed (not held)", call: func() error {
			assert.ErrorIs(t, s.Renew(ctx, key, token, time.Minute), idempotency.ErrNotHeld)
			return nil
		}},
		{name: "release", call: func() error {
			other := storetest.Key()
			_, err := s.Claim(ctx, other, token, time.Minute)
			require.NoError(t, err)
			counter.Reset()
			return s.Release(ctx, other, token)
		}},
	}
	for _, step := range steps {
		counter.Reset()
		require.NoError(t, step.call(), step.name)
		assert.Equal(t, []string{"evalsha"}, counter.Names(), "%s: want one round trip", step.name)
	}
}

// warmUp runs every script once, so that Redis has them cached and later
// calls are one EVALSHA each.
func warmUp(t testing.TB, s *redisstore.Store) {
	t.Helper()
	ctx := context.Background()
	key, token := storetest.Key(), newToken()
	_, err := s.Claim(ctx, key, token, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Renew(ctx, key, token, time.Minute))
	require.NoError(t, s.Complete(ctx, key, token, nil, time.Minute))
	require.NoError(t, s.Wait(ctx, key))
	key = storetest.Key()
	_, err = s.Claim(ctx, key, token, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx, key, token))
}

func TestBinaryRecords(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, _ := newStore(t, c)
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	tests := []struct {
		name   string
		record []byte
	}{
		{name: "empty", record: []byte{}},
		{name: "nil", record: nil},
		{name: "every byte value", record: allBytes},
		{name: "NUL bytes", record: []byte("\x00\x00a\x00")},
		{name: "invalid UTF-8", record: []byte("\xff\xfe\xc3\x28")},
		{name: "starts with a tag", record: []byte("c-token-lookalike")},
		{name: "CRLF and RESP", record: []byte("$3\r\nfoo\r\n*1\r\n")},
		{name: "1 MiB random", record: big},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key, token := storetest.Key(), newToken()
			_, err := s.Claim(t.Context(), key, token, time.Minute)
			require.NoError(t, err)
			require.NoError(t, s.Complete(t.Context(), key, token, tt.record, time.Minute))
			res, err := s.Claim(t.Context(), key, newToken(), time.Minute)
			require.NoError(t, err)
			assert.Equal(t, idempotency.StateCompleted, res.State)
			assert.True(t, bytes.Equal(tt.record, res.Record), "the record must come back byte for byte")
		})
	}
}

// TestForeignValues puts values that this package never writes under a
// storage key: every method must answer with an error or ErrNotHeld,
// never panic, never claim, and leave the value alone.
func TestForeignValues(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, prefix := newStore(t, c)
	tests := []struct {
		name       string
		write      func(ctx context.Context, rkey string) error
		wantNoType bool // GET fails on the value (WRONGTYPE), so every call errs
	}{
		{name: "hash", wantNoType: true, write: func(ctx context.Context, rkey string) error {
			return c.HSet(ctx, rkey, "s", "d", "r", "x").Err()
		}},
		{name: "list", wantNoType: true, write: func(ctx context.Context, rkey string) error {
			return c.RPush(ctx, rkey, "d").Err()
		}},
		{name: "set", wantNoType: true, write: func(ctx context.Context, rkey string) error {
			return c.SAdd(ctx, rkey, "d").Err()
		}},
		{name: "empty string", write: func(ctx context.Context, rkey string) error {
			return c.Set(ctx, rkey, "", 0).Err()
		}},
		{name: "unknown tag", write: func(ctx context.Context, rkey string) error {
			return c.Set(ctx, rkey, "garbage", 0).Err()
		}},
		{name: "integer", write: func(ctx context.Context, rkey string) error {
			return c.Set(ctx, rkey, 12345, 0).Err()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			key, token := storetest.Key(), newToken()
			rkey := prefix + key
			require.NoError(t, tt.write(ctx, rkey))
			before, err := c.Dump(ctx, rkey).Result()
			require.NoError(t, err)

			assert.NotPanics(t, func() {
				res, err := s.Claim(ctx, key, token, time.Minute)
				assert.Error(t, err, "Claim on a foreign value")
				assert.Zero(t, res)

				for name, err := range map[string]error{
					"Complete": s.Complete(ctx, key, token, []byte("x"), time.Minute),
					"Release":  s.Release(ctx, key, token),
					"Renew":    s.Renew(ctx, key, token, time.Minute),
				} {
					if tt.wantNoType {
						assert.Error(t, err, name)
						assert.NotErrorIs(t, err, idempotency.ErrNotHeld, name)
					} else {
						assert.ErrorIs(t, err, idempotency.ErrNotHeld, name)
					}
				}
				waitErr := s.Wait(ctx, key)
				if tt.wantNoType {
					assert.Error(t, waitErr, "Wait")
				} else {
					assert.NoError(t, waitErr, "Wait: a foreign value is no live claim")
				}
			})

			after, err := c.Dump(ctx, rkey).Result()
			require.NoError(t, err)
			assert.Equal(t, before, after, "the foreign value must be left alone")
		})
	}
}

func TestTTLs(t *testing.T) { //nolint:tparallel // the subtests share one store and read TTLs in turn
	t.Parallel()
	c := redistest.Client(t)
	s, prefix := newStore(t, c)
	ctx := t.Context()
	pttl := func(key string) time.Duration {
		d, err := c.PTTL(ctx, prefix+key).Result()
		require.NoError(t, err)
		return d
	}

	t.Run("lease", func(t *testing.T) {
		key, token := storetest.Key(), newToken()
		_, err := s.Claim(ctx, key, token, 30*time.Second)
		require.NoError(t, err)
		assert.InDelta(t, 30*time.Second, pttl(key), float64(5*time.Second), "the lease is the key's TTL")

		require.NoError(t, s.Renew(ctx, key, token, 90*time.Second))
		assert.InDelta(t, 90*time.Second, pttl(key), float64(5*time.Second), "a renewal sets the TTL anew")

		res, err := s.Claim(ctx, key, newToken(), time.Minute)
		require.NoError(t, err)
		assert.InDelta(t, 90*time.Second, res.LeaseLeft, float64(5*time.Second), "in flight reports the lease left")
	})
	t.Run("expiry", func(t *testing.T) {
		key, token := storetest.Key(), newToken()
		_, err := s.Claim(ctx, key, token, time.Second)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, key, token, []byte("r"), time.Hour))
		assert.InDelta(t, time.Hour, pttl(key), float64(5*time.Second), "the expiry is the key's TTL, not the lease")
		assert.ErrorIs(t, s.Renew(ctx, key, token, time.Millisecond), idempotency.ErrNotHeld)
		assert.InDelta(t, time.Hour, pttl(key), float64(5*time.Second), "a late renewal must not shorten a record")
	})
	t.Run("expiry zero means never", func(t *testing.T) {
		key, token := storetest.Key(), newToken()
		_, err := s.Claim(ctx, key, token, time.Second)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, key, token, []byte("r"), 0))
		assert.Equal(t, time.Duration(-1), pttl(key), "a record that never expires has no TTL (PTTL -1)")
	})
	t.Run("huge lease is cut to MaxTTL", func(t *testing.T) {
		key, token := storetest.Key(), newToken()
		_, err := s.Claim(ctx, key, token, math.MaxInt64)
		require.NoError(t, err)
		assert.InDelta(t, redisstore.MaxTTL, pttl(key), float64(time.Minute), "the lease is cut to MaxTTL")

		require.NoError(t, s.Renew(ctx, key, token, time.Second))
		require.NoError(t, s.Renew(ctx, key, token, math.MaxInt64))
		assert.InDelta(t, redisstore.MaxTTL, pttl(key), float64(time.Minute), "a renewal is cut to MaxTTL")

		res, err := s.Claim(ctx, key, newToken(), time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.StateInFlight, res.State)
		assert.InDelta(t, redisstore.MaxTTL, res.LeaseLeft, float64(time.Minute), "in flight reports the lease left")
	})
	t.Run("huge expiry is cut to MaxTTL", func(t *testing.T) {
		key, token := storetest.Key(), newToken()
		_, err := s.Claim(ctx, key, token, time.Second)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, key, token, []byte("r"), math.MaxInt64))
		assert.InDelta(t, redisstore.MaxTTL, pttl(key), float64(time.Minute), "the expiry is cut to MaxTTL")
	})
	t.Run("sub-millisecond lease rounds up", func(t *testing.T) {
		key := storetest.Key()
		res, err := s.Claim(ctx, key, newToken(), time.Microsecond)
		require.NoError(t, err)
		assert.Equal(t, idempotency.StateClaimed, res.State)
	})
}

func TestInvalidDurations(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, _ := newStore(t, c)
	ctx := t.Context()
	key, token := storetest.Key(), newToken()
	_, err := s.Claim(ctx, key, token, 0)
	assert.ErrorContains(t, err, "lease must be positive")
	_, err = s.Claim(ctx, key, token, -time.Second)
	assert.ErrorContains(t, err, "lease must be positive")
	assert.ErrorContains(t, s.Renew(ctx, key, token, 0), "lease must be positive")
	assert.ErrorContains(t, s.Complete(ctx, key, token, nil, -time.Second), "expiry must not be negative")
}

// TestRedisDown stops Redis under a store: calls fail fast with an error
// (the engine's store failure), and the store works again once Redis is
// back, within 5 s.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	c := srv.Client(t)
	counter := redistest.NewCounter(c)
	s, _ := newStore(t, c)
	warmUp(t, s)

	srv.Kill()
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{name: "claim", call: func(ctx context.Context) error {
			_, err := s.Claim(ctx, storetest.Key(), newToken(), time.Minute)
			return err
		}},
		{name: "complete", call: func(ctx context.Context) error {
			return s.Complete(ctx, storetest.Key(), newToken(), nil, time.Minute)
		}},
		{name: "release", call: func(ctx context.Context) error { return s.Release(ctx, storetest.Key(), newToken()) }},
		{name: "renew", call: func(ctx context.Context) error {
			return s.Renew(ctx, storetest.Key(), newToken(), time.Minute)
		}},
		{name: "wait", call: func(ctx context.Context) error { return s.Wait(ctx, storetest.Key()) }},
	}
	for _, tt := range calls {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		start := time.Now()
		err := tt.call(ctx)
		cancel()
		assert.Error(t, err, "%s with Redis down", tt.name)
		assert.NotErrorIs(t, err, idempotency.ErrNotHeld, tt.name)
		assert.Less(t, time.Since(start), 2*time.Second, "%s must give up with its context", tt.name)
	}

	srv.Start()
	restarted := time.Now()
	var res idempotency.ClaimResult
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		counter.Reset()
		var err error
		res, err = s.Claim(ctx, storetest.Key(), newToken(), time.Minute)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "the store must work again within 5 s of Redis's return")
	t.Logf("store back %v after Redis restarted", time.Since(restarted).Round(time.Millisecond))
	assert.Equal(t, idempotency.StateClaimed, res.State)
	// A restarted Redis has lost its script cache: the first call pays one
	// more round trip for EVAL.
	assert.Equal(t, []string{"evalsha", "eval"}, counter.Names())
}

func TestNewWarnsWithoutContextTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		client   redis.UniversalClient
		wantWarn bool
	}{
		{name: "client without", client: redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), wantWarn: true},
		{name: "client with", client: redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true})},
		{name: "cluster without", client: redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}}), wantWarn: true},
		{name: "cluster with", client: redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}, ContextTimeoutEnabled: true})},
		{name: "failover without", client: redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "m", SentinelAddrs: []string{"127.0.0.1:1"}}), wantWarn: true},
		{name: "ring with", client: redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}, ContextTimeoutEnabled: true})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			t.Cleanup(func() { _ = tt.client.Close() })
			var buf bytes.Buffer
			s := redisstore.New(tt.client, redisstore.WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
			require.NoError(t, s.Close())
			assert.Equal(t, tt.wantWarn, strings.Contains(buf.String(), "ContextTimeoutEnabled"), "log: %s", buf.String())
		})
	}
}

func TestOptionPanics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		call      func()
		wantPanic string
	}{
		{name: "nil client", call: func() { redisstore.New(nil) }, wantPanic: "redisstore: New: nil client"},
		{name: "nil logger", call: func() { redisstore.WithLogger(nil) }, wantPanic: "redisstore: WithLogger: nil logger"},
		{name: "zero poll", call: func() { redisstore.WithPollInterval(0) }, wantPanic: "redisstore: WithPollInterval: interval must be positive, got 0s"},
		{name: "negative poll", call: func() { redisstore.WithPollInterval(-time.Second) }, wantPanic: "redisstore: WithPollInterval: interval must be positive, got -1s"},
		{name: "zero cache", call: func() { redisstore.WithLocalCache(0) }, wantPanic: "redisstore: WithLocalCache: maxEntries must be positive, got 0"},
		{name: "negative cache", call: func() { redisstore.WithLocalCache(-1) }, wantPanic: "redisstore: WithLocalCache: maxEntries must be positive, got -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.PanicsWithValue(t, tt.wantPanic, tt.call)
		})
	}
}
