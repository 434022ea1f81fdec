package redisstore_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
	"github.com/idemkey/idempotency/storetest"
)

// noPoll is a poll interval that no test waits out: a Wait that returns
// within such a test was woken by a message or by the lease.
const noPoll = 10 * time.Minute

// startWait runs Wait in a goroutine and sends its result.
func startWait(ctx context.Context, s *redisstore.Store, key string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.Wait(ctx, key) }()
	return done
}

// awaitMarked waits until a waiter has marked the claim on rkey, which
// Wait does once its subscription is up.
func awaitMarked(t *testing.T, c redis.UniversalClient, rkey string) {
	t.Helper()
	require.Eventually(t, func() bool {
		v, err := c.Get(context.Background(), rkey).Result()
		return err == nil && strings.HasPrefix(v, "w")
	}, 5*time.Second, time.Millisecond, "the waiter never marked the claim")
}

func receive(t *testing.T, done <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		require.FailNow(t, "Wait did not return", "within %v", within)
		return nil
	}
}

// TestWaitAcrossStores has two stores on two clients share one Redis, as
// two instances of a service do: a Wait on one is woken when the other
// completes or releases, by a message, and the time from that call to the
// Wait's return is measured.
func TestWaitAcrossStores(t *testing.T) {
	t.Parallel()
	ca, cb := redistest.Client(t), redistest.Client(t)
	a, prefix := newStore(t, ca)
	b := newStoreWithPrefix(t, cb, prefix, redisstore.WithPollInterval(noPoll))
	ctx := t.Context()

	const rounds = 100
	latencies := make([]time.Duration, 0, rounds)
	for i := range rounds {
		key, token := storetest.Key(), newToken()
		_, err := a.Claim(ctx, key, token, noPoll)
		require.NoError(t, err)
		done := startWait(ctx, b, key)
		awaitMarked(t, ca, prefix+key)

		start := time.Now()
		if i%2 == 0 {
			require.NoError(t, a.Complete(ctx, key, token, []byte("r"), time.Minute))
		} else {
			require.NoError(t, a.Release(ctx, key, token))
		}
		require.NoError(t, receive(t, done, 5*time.Second))
		latencies = append(latencies, time.Since(start))
	}
	slices.Sort(latencies)
	median, worst := latencies[rounds/2], latencies[rounds-1]
	t.Logf("wake-up latency across two stores over %d rounds (complete/release call to Wait's return): median %v, worst %v",
		rounds, median, worst)
	assert.Less(t, worst, time.Second, "a message wakes the waiter; the poll never does here")
}

// TestWaitLeaseRunsOut checks that a waiter returns when the lease runs
// out, which nobody announces, without waiting for its poll interval.
func TestWaitLeaseRunsOut(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, _ := newStore(t, c, redisstore.WithPollInterval(noPoll))
	key := storetest.Key()
	const lease = 500 * time.Millisecond
	_, err := s.Claim(t.Context(), key, newToken(), lease)
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, receive(t, startWait(t.Context(), s, key), 5*time.Second))
	elapsed := time.Since(start)
	assert.GreaterOrEqual(t, elapsed, lease-100*time.Millisecond, "Wait returned long before the lease ran out")

	res, err := s.Claim(t.Context(), key, newToken(), lease)
	require.NoError(t, err)
	assert.Equal(t, idempotency.StateClaimed, res.State, "when Wait returns for the lease, the claim is gone")
}

// TestWaitPollInterval checks the fallback: a waiter whose wake-up never
// comes returns after the poll interval.
func TestWaitPollInterval(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	const poll = 300 * time.Millisecond
	s, _ := newStore(t, c, redisstore.WithPollInterval(poll))
	key := storetest.Key()
	_, err := s.Claim(t.Context(), key, newToken(), time.Minute)
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, receive(t, startWait(t.Context(), s, key), 5*time.Second))
	assert.GreaterOrEqual(t, time.Since(start), poll-50*time.Millisecond)
}

// TestWaitCommands counts what a waiting store sends while another
// instance's handler runs for a while: one command (the mark) and one
// subscription, whatever the wait's length; and the completion that nobody
// waits for publishes nothing.
func TestWaitCommands(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	ca, cb := srv.Client(t), srv.Client(t)
	counter := redistest.NewCounter(cb)
	a, prefix := newStore(t, ca)
	b := newStoreWithPrefix(t, cb, prefix, redisstore.WithPollInterval(noPoll))
	warmUp(t, a)
	ctx := t.Context()

	before := commandStats(t, ca)
	key, token := storetest.Key(), newToken()
	_, err := a.Claim(ctx, key, token, time.Minute)
	require.NoError(t, err)
	counter.Reset()
	done := startWait(ctx, b, key)
	awaitMarked(t, ca, prefix+key)
	time.Sleep(1500 * time.Millisecond) // the handler's run time: what b sends must not grow with it
	require.NoError(t, a.Complete(ctx, key, token, []byte("r"), time.Minute))
	require.NoError(t, receive(t, done, 5*time.Second))
	assert.Equal(t, []string{"evalsha"}, counter.Names(), "the waiting store sends one command: the mark")

	// A completion nobody waits for publishes nothing.
	key, token = storetest.Key(), newToken()
	_, err = a.Claim(ctx, key, token, time.Minute)
	require.NoError(t, err)
	require.NoError(t, a.Complete(ctx, key, token, []byte("r"), time.Minute))

	after := commandStats(t, ca)
	delta := func(cmd string) int { return after[cmd] - before[cmd] }
	assert.Equal(t, 1, delta("subscribe"), "one subscription for the store")
	assert.Equal(t, 0, delta("ping"), "no pings during a short wait")
	assert.Equal(t, 1, delta("publish"), "one wake-up, for the marked claim only")
	assert.Equal(t, 5, delta("evalsha"), "two claims, two completions, one mark")
}

// commandStats returns the calls per command from INFO commandstats, which
// counts the commands that scripts run too.
func commandStats(t *testing.T, c *redis.Client) map[string]int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	require.NoError(t, err)
	stats := map[string]int{}
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		n, err := strconv.Atoi(calls)
		require.NoError(t, err, line)
		stats[name] = n
	}
	return stats
}

// TestWaitSubscriptionLost kills Redis under a waiting store: when Redis
// is back, the subscription is restored, the waiter is woken (its wake-up
// may have been lost meanwhile), and later wake-ups arrive again.
func TestWaitSubscriptionLost(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t, redistest.WithAppendOnly())
	ca, cb := srv.Client(t), srv.Client(t)
	a, prefix := newStore(t, ca)
	b := newStoreWithPrefix(t, cb, prefix, redisstore.WithPollInterval(noPoll))
	ctx := t.Context()

	key, token := storetest.Key(), newToken()
	_, err := a.Claim(ctx, key, token, noPoll)
	require.NoError(t, err)
	done := startWait(ctx, b, key)
	awaitMarked(t, ca, prefix+key)

	srv.Kill()
	srv.Start()
	require.NoError(t, receive(t, done, 10*time.Second), "a resubscription must wake the waiters")

	done = startWait(ctx, b, key)
	awaitMarked(t, ca, prefix+key)
	require.NoError(t, a.Complete(ctx, key, token, []byte("r"), time.Minute))
	require.NoError(t, receive(t, done, 5*time.Second), "wake-ups must arrive after the subscription is back")
}

// TestClose checks that Close ends waits in progress and the subscription's
// goroutine, and that it may be called twice.
func TestClose(t *testing.T) {
	// Not parallel: goleak sees every goroutine of the process.
	redistest.Addr(t) // the shared server, started outside the check
	ignore := goleak.IgnoreCurrent()
	// Registered first, so it runs after the client's own clean-up.
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	c := redistest.NewClient(t, &redis.Options{Addr: redistest.Addr(t)})
	s := redisstore.New(c, redisstore.WithPrefix(redistest.Prefix(t, c)), redisstore.WithPollInterval(noPoll))
	key := storetest.Key()
	_, err := s.Claim(t.Context(), key, newToken(), time.Minute)
	require.NoError(t, err)
	done := startWait(t.Context(), s, key)
	time.Sleep(100 * time.Millisecond) // let the wait reach Redis; ErrClosed is right either way

	require.NoError(t, s.Close())
	assert.ErrorIs(t, receive(t, done, 5*time.Second), redisstore.ErrClosed)
	require.NoError(t, s.Close(), "a second Close")
	assert.ErrorIs(t, s.Wait(t.Context(), key), redisstore.ErrClosed, "Wait after Close")
	_, err = s.Claim(t.Context(), storetest.Key(), newToken(), time.Minute)
	assert.NoError(t, err, "the other methods keep working after Close")
}

// TestWaitContext checks that a Wait ends with its context.
func TestWaitContext(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	s, _ := newStore(t, c, redisstore.WithPollInterval(noPoll))
	key := storetest.Key()
	_, err := s.Claim(t.Context(), key, newToken(), time.Minute)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err = receive(t, startWait(ctx, s, key), 5*time.Second)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}
